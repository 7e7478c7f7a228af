"""Data for the offline work: the labeled dataset (dataset), synthetic clips (synthetic), tightening of the
visible camera's loose boxes (tighten) and the one COCO ground-truth builder (coco)."""
