"use strict";
// Operator live view: stream states, tracks and health over a WebSocket (/ws); video is MJPEG.
const POLL_MS = 500;
const RECORDINGS_MS = 5000;
const tiles = new Map();  // stream id -> {tile, img, overlay, info, state, url}
// Frames shown and their latency (capture -> decoded here), for the operator and for tests.
window.liveView = {frames: {}, latencyMs: []};

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;  // never innerHTML: ids and class names come from the network
  return node;
}

// ---------------------------------------------------------------- video
// All streams arrive as one MJPEG response (a browser opens only 6 connections per host); each part
// carries X-Stream-Id, X-Frame-Index and X-Capture-Wall headers.
const CRLF2 = new Uint8Array([13, 10, 13, 10]);
let videoStreams = "";  // the stream list of the open connection

function indexOf(buf, pattern) {
  outer: for (let i = 0; i + pattern.length <= buf.length; i++) {
    for (let j = 0; j < pattern.length; j++) if (buf[i + j] !== pattern[j]) continue outer;
    return i;
  }
  return -1;
}

function* parts(state) {
  // yields complete parts from state.buf, keeping the unfinished rest
  for (;;) {
    const headEnd = indexOf(state.buf, CRLF2);
    if (headEnd < 0) return;
    const headers = {};
    for (const line of new TextDecoder().decode(state.buf.subarray(0, headEnd)).split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const start = headEnd + 4, length = parseInt(headers["content-length"], 10);
    if (!(length >= 0)) throw new Error("video part without Content-Length");
    if (state.buf.length < start + length) return;
    yield {headers, body: state.buf.slice(start, start + length)};
    state.buf = state.buf.subarray(start + length);
  }
}

function showFrame(part) {
  const id = decodeURIComponent(part.headers["x-stream-id"] || "");
  const entry = tiles.get(id);
  if (!entry) return;
  const url = URL.createObjectURL(new Blob([part.body], {type: "image/jpeg"}));
  const captured = parseFloat(part.headers["x-capture-wall"]) * 1000;
  const img = entry.img;
  img.src = url;
  img.decode().then(() => {
    window.liveView.frames[id] = (window.liveView.frames[id] || 0) + 1;
    const latency = window.liveView.latencyMs;
    latency.push(Date.now() - captured);
    if (latency.length > 1000) latency.shift();
  }).catch(() => {}).finally(() => {
    if (entry.url) URL.revokeObjectURL(entry.url);
    entry.url = url;
  });
}

async function playVideo(ids) {
  const query = ids.map((id) => "stream=" + encodeURIComponent(id)).join("&");
  videoStreams = ids.join("\n");
  try {
    const response = await fetch("video?" + query, {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const reader = response.body.getReader();
    const state = {buf: new Uint8Array(0)};
    while (videoStreams === ids.join("\n")) {
      const {done, value} = await reader.read();
      if (done) break;
      const joined = new Uint8Array(state.buf.length + value.length);
      joined.set(state.buf);
      joined.set(value, state.buf.length);
      state.buf = joined;
      for (const part of parts(state)) showFrame(part);
    }
    reader.cancel().catch(() => {});
  } catch (err) { /* reconnect below; the state poll shows what is down */ }
  if (videoStreams === ids.join("\n")) {
    videoStreams = "";
    setTimeout(() => ensureVideo(ids), 1000);
  }
}

function ensureVideo(ids) {
  if (ids.length && ids.join("\n") !== videoStreams) playVideo(ids);
}

function tileFor(id) {
  if (tiles.has(id)) return tiles.get(id);
  const tile = el("div", {class: "tile waiting", "data-stream": id});
  const img = el("img", {class: "video", alt: "stream " + id});
  const overlay = el("div", {class: "overlay"}, "WAITING");
  const caption = el("div", {class: "caption"});
  const name = el("span", {class: "name"}, id);
  const info = el("span", {class: "info"});
  caption.append(name, info);
  tile.append(img, overlay, caption);
  document.getElementById("streams").append(tile);
  const entry = {tile, img, overlay, info, state: "waiting", url: null};
  tiles.set(id, entry);
  return entry;
}

function showStream(stream) {
  const entry = tileFor(stream.id);
  entry.state = stream.state;
  entry.tile.className = "tile " + stream.state;
  entry.overlay.textContent = stream.state.toUpperCase();
  const age = stream.age_s === null ? "no frames yet" : `frame ${stream.frame_index}, ${stream.age_s.toFixed(1)} s ago`;
  entry.info.textContent = `${stream.state} · ${stream.fps.toFixed(1)} fps · ${age}`;
}

function markAllDown(reason) {
  for (const entry of tiles.values()) {
    entry.state = "down";
    entry.tile.className = "tile down";
    entry.overlay.textContent = reason;
  }
}

function clock(t) {
  return t > 1e9 ? new Date(t * 1000).toLocaleTimeString() : `t=${t.toFixed(1)} s`;
}

function duration(track, now) {
  if (track.end !== null) return `${(track.end - track.start).toFixed(1)} s`;
  return track.start > 1e9 ? `${(now - track.start).toFixed(1)} s, active` : "active";
}

function showTracks(tracks, now) {
  const list = document.getElementById("tracks");
  list.replaceChildren(...tracks.map((track) => {
    const item = el("li", {class: "track" + (track.end === null ? " active" : ""), "data-track": track.track_id});
    if (track.thumb) item.append(el("img", {class: "thumb", src: track.thumb, alt: "track thumbnail"}));
    const text = el("div");
    text.append(el("div", {}, `${track.class} #${track.track_id} on ${track.stream_id}`),
                el("div", {}, `${clock(track.start)} · ${duration(track, now)}`));
    if (track.review) text.append(reviewLink(el("a", {class: "review", href: track.review.url}, "▶ review"), track));
    item.append(text);
    return item;
  }));
}

// ---------------------------------------------------------------- review of recordings
// A drone track links to its moment in the recording (the segment and the offset into it, from the
// recorder's segment index); the segment plays in the page's <video> from there.
function reviewLink(node, track) {
  node.dataset.reviewUrl = track.review.url;
  node.dataset.reviewT = String(track.review.t);
  node.dataset.reviewTitle = `${track.class} #${track.track_id} on ${track.stream_id}, ${clock(track.start)}`;
  return node;
}

function review(url, t, title) {
  const video = document.getElementById("review-video");
  document.getElementById("review-title").textContent = title;
  document.getElementById("review").hidden = false;
  video.onloadedmetadata = () => {
    video.currentTime = t;
    video.play().catch(() => {});  // autoplay may be refused: the controls are there
  };
  video.src = url;
  window.liveView.review = {url, t};
}

document.addEventListener("click", (event) => {
  // delegated: the lists are redrawn at every state, a handler on an item would be lost
  const target = event.target.closest("[data-review-url]");
  if (target) {
    event.preventDefault();
    review(target.dataset.reviewUrl, parseFloat(target.dataset.reviewT), target.dataset.reviewTitle);
  } else if (event.target.id === "review-close") {
    const video = document.getElementById("review-video");
    video.pause();
    video.removeAttribute("src");
    document.getElementById("review").hidden = true;
  }
});

function showTimeline(streams, tracks, now, span) {
  const from = now - span;
  const rows = streams.map((stream) => {
    const bar = el("div", {class: "timeline-bar"});
    for (const track of tracks) {
      if (track.stream_id !== stream.id || track.start < from || track.start > 1e12) continue;
      const end = track.end === null ? now : track.end;
      const mark = el("span", {class: "mark" + (track.review ? " recorded" : ""), "data-track": track.track_id,
                               title: `${track.class} #${track.track_id}, ${clock(track.start)}`});
      mark.style.left = `${(100 * (track.start - from) / span).toFixed(3)}%`;
      mark.style.width = `${Math.max(0.3, 100 * (end - track.start) / span).toFixed(3)}%`;
      bar.append(track.review ? reviewLink(mark, track) : mark);
    }
    const row = el("div", {class: "timeline-row", "data-stream": stream.id});
    row.append(el("span", {class: "timeline-name"}, stream.id), bar);
    return row;
  });
  const axis = el("div", {class: "timeline-axis"});
  axis.append(el("span", {}, clock(from)), el("span", {}, "now"));
  document.getElementById("timeline").replaceChildren(...rows, axis);
}

function showStreamEvents(events) {
  const list = document.getElementById("stream-events");
  list.replaceChildren(...events.map((event) =>
    el("li", {class: event.type === "stream_down" ? "bad" : "ok"},
       `${clock(event.time)} ${event.stream_id}: ${event.type.replace("_", " ")}`)));
}

const HEALTH_FIELDS = ["fps", "latency_ms_p50", "latency_ms_p99", "dropped_stale", "dropped_full", "restarts"];

function showHealth(stages) {
  const body = document.querySelector("#health tbody");
  body.replaceChildren(...Object.keys(stages).sort().map((label) => {
    const beat = stages[label];
    const down = beat.alive === false || beat.stream === "down";
    const row = el("tr", {class: down ? "bad" : "", "data-stage": label});
    const state = beat.alive === false ? "not running" : (beat.stream ? `${beat.state || "?"}, stream ${beat.stream}` : (beat.state || "starting"));
    row.append(el("td", {}, label), el("td", {}, state));
    for (const key of HEALTH_FIELDS) row.append(el("td", {}, key in beat ? String(beat[key]) : "-"));
    return row;
  }));
}

function showState(state) {
  state.streams.forEach(showStream);
  ensureVideo(state.streams.map((stream) => stream.id));
  showTracks(state.tracks, state.now);
  showTimeline(state.streams, state.tracks, state.now, state.timeline_s);
  showStreamEvents(state.events);
  showHealth(state.stages);
  const conn = document.getElementById("connection");
  conn.textContent = state.status_age_s === null ? "no pipeline status yet" : `status ${state.status_age_s.toFixed(1)} s old`;
  conn.className = state.status_age_s !== null && state.status_age_s < 10 ? "ok" : "bad";
}

function showUnreachable(why) {
  document.getElementById("connection").textContent = "view unreachable: " + why;
  document.getElementById("connection").className = "bad";
  markAllDown("NO CONNECTION");
}

// The state comes over a WebSocket, pushed at every event and twice a second; where a WebSocket
// cannot be had (a proxy that does not pass it) the page polls api/state instead.
let socketFailures = 0;

function followState() {
  if (socketFailures >= 3) return poll();
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`);
  let received = false;
  ws.onmessage = (message) => {
    received = true;
    socketFailures = 0;
    window.liveView.stateVia = "websocket";
    try { showState(JSON.parse(message.data)); } catch (err) { /* one bad message: the next one comes soon */ }
  };
  ws.onclose = () => {
    if (!received) socketFailures += 1;
    showUnreachable("connection lost, reconnecting");
    setTimeout(followState, 1000);
  };
}

async function poll() {
  try {
    const response = await fetch("api/state", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    showState(await response.json());
    window.liveView.stateVia = "poll";
  } catch (err) {
    showUnreachable(err.message);
  }
  setTimeout(poll, POLL_MS);
}

async function pollRecordings() {
  try {
    const response = await fetch("api/recordings", {cache: "no-store"});
    const data = await response.json();
    const box = document.getElementById("recordings");
    const blocks = Object.entries(data.streams).map(([id, files]) => {
      const block = el("div", {class: "recording"});
      block.append(el("strong", {}, id + ": "));
      for (const file of files) {
        block.append(el("a", {href: file.url, download: ""}, `${file.name} (${(file.bytes / 1e6).toFixed(1)} MB)`), " ");
      }
      return block;
    });
    if (data.events) {
      const block = el("div");
      block.append(el("a", {href: data.events}, "events.jsonl"));
      blocks.push(block);
    }
    box.replaceChildren(...blocks);
  } catch (err) { /* the state poll reports the connection */ }
  setTimeout(pollRecordings, RECORDINGS_MS);
}

followState();
pollRecordings();
