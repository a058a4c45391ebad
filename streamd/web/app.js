// streamd web page: camera -> WHIP, generated stream <- WHEP, prompt/guidance through the HTTP control API.
"use strict";

const $ = (id) => document.getElementById(id);
const stats = { stream: null, framesReceived: 0, fps: 0, latency: null, state: "idle", error: null };
window.streamdStats = stats; // read by tests and handy in the console
let whipPc = null, whepPc = null, whipLocation = null, whepLocation = null, timer = null;

function headers(type) {
  const h = {};
  if (type) h["Content-Type"] = type;
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function show(state, message) {
  stats.state = state;
  $("state").textContent = state;
  $("message").textContent = message || "";
  if (message) stats.error = message;
}

async function gathered(pc) {
  // streamd does not trickle: send one offer with every candidate
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}

async function negotiate(pc, url) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const resp = await fetch(url, { method: "POST", headers: headers("application/sdp"), body: pc.localDescription.sdp });
  const body = await resp.text();
  if (resp.status !== 201) {
    let detail = body;
    try { detail = JSON.parse(body).detail; } catch (e) { /* not JSON */ }
    const err = new Error(`${url}: ${resp.status} ${detail}`);
    err.status = resp.status;
    throw err;
  }
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  return { location: resp.headers.get("Location"), stream: resp.headers.get("Streamd-Stream-Id") };
}

async function watch(stream) {
  // the stream can be played once its first chunk exists: retry while the daemon answers 404
  for (let attempt = 0; attempt < 60; attempt++) {
    whepPc = new RTCPeerConnection();
    whepPc.addTransceiver("video", { direction: "recvonly" });
    whepPc.ontrack = (ev) => { $("generated").srcObject = new MediaStream([ev.track]); };
    try {
      const res = await negotiate(whepPc, "/whep/" + encodeURIComponent(stream));
      whepLocation = res.location;
      return;
    } catch (err) {
      whepPc.close();
      whepPc = null;
      if (err.status !== 404) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  throw new Error("the generated stream did not appear");
}

async function poll() {
  if (whepPc) {
    const report = await whepPc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        stats.framesReceived = s.framesDecoded || 0;
        stats.fps = s.framesPerSecond || 0;
      }
    });
    $("frames").textContent = stats.framesReceived;
    $("fps").textContent = stats.fps ? stats.fps.toFixed(1) : "–";
  }
  if (stats.stream) {
    const resp = await fetch("/api/status", { headers: headers() });
    if (resp.ok) {
      const body = await resp.json();
      const info = (body.stream_stats || {})[stats.stream];
      if (info && info.latency_s != null) {
        stats.latency = info.latency_s;
        $("latency").textContent = info.latency_s.toFixed(2) + " s";
      }
    }
  }
}

async function start() {
  $("start").disabled = true;
  try {
    show("starting camera");
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
    $("camera").srcObject = media;
    whipPc = new RTCPeerConnection();
    whipPc.addTransceiver(media.getVideoTracks()[0], { direction: "sendonly" });
    show("connecting");
    const res = await negotiate(whipPc, "/whip");
    whipLocation = res.location;
    stats.stream = res.stream;
    $("stream").textContent = res.stream;
    show("waiting for generated video");
    await watch(res.stream);
    show("live");
    $("stop").disabled = false;
    $("apply").disabled = false;
    timer = setInterval(() => poll().catch(() => {}), 1000);
  } catch (err) {
    show("error", err.message);
    $("start").disabled = false;
  }
}

async function stop() {
  clearInterval(timer);
  for (const loc of [whepLocation, whipLocation]) {
    if (loc) await fetch(loc, { method: "DELETE", headers: headers() }).catch(() => {});
  }
  for (const pc of [whepPc, whipPc]) if (pc) pc.close();
  whipPc = whepPc = whipLocation = whepLocation = null;
  const cam = $("camera").srcObject;
  if (cam) cam.getTracks().forEach((t) => t.stop());
  $("stop").disabled = true;
  $("apply").disabled = true;
  $("start").disabled = false;
  show("idle");
}

async function command(verb, payload) {
  const resp = await fetch("/api/cmd/" + verb, {
    method: "POST", headers: headers("application/json"), body: JSON.stringify(payload),
  });
  const reply = await resp.json();
  if (!reply.ok) throw new Error(reply.detail || reply.error);
  return reply;
}

async function apply() {
  try {
    await command("prompt", { stream: stats.stream, prompt: $("prompt").value });
    await command("params", { stream: stats.stream, guidance: Number($("guidance").value) });
    $("message").textContent = "applied at the next chunk";
  } catch (err) {
    show(stats.state, err.message);
  }
}

async function describeModel() {
  const resp = await fetch("/api/status", { headers: headers() });
  if (!resp.ok) return;
  const body = await resp.json();
  $("model").textContent = modelText(body);
}

// Names the model and what it learned from; a random-weight model says that its output is noise.
function modelText(body) {
  if (!body.model) return "–";
  // daemons before model_trained sent only model_embedded, then meaning "embedded with random weights"
  const trained = body.model_trained ?? !body.model_embedded;
  if (!trained) return `${body.model} (random weights, untrained: the generated video is structured noise)`;
  if (body.model_description) return `${body.model}: ${body.model_description}`;
  return body.model_embedded
    ? `${body.model} (embedded, trained on procedural video: moving shapes, pans, zooms, rotation)` : body.model;
}

describeModel().catch(() => {});
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("apply").addEventListener("click", apply);
