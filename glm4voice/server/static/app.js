// glm4voice web UI: one WebSocket session (docs/protocol.md), microphone capture and gapless playback through
// AudioWorklets (worklets.js). No build step, no dependencies.

const $ = (id) => document.getElementById(id);
const OUTPUT_RATE = 22050;
const state = { // also read by the browser test (window.glm4voice)
  ws: null, ready: false, mode: "hold", holding: false, listening: false, answering: false,
  captureCtx: null, playCtx: null, player: null, micStream: null, capture: null,
  turnEl: null, turnText: "", turns: [], played: 0, turnStartPlayed: 0, audioBytes: 0, errors: [], timings: {},
  underruns: 0,
};
window.glm4voice = state;

// --- connection -------------------------------------------------------------------------------------------
function connect() {
  if (state.ws) state.ws.close();
  const key = $("api_key").value || localStorage.getItem("glm4voice.api_key") || "";
  const url = new URL("/v1/realtime", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (key) url.searchParams.set("api_key", key);
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  setStatus("connecting");
  ws.onmessage = (e) => (typeof e.data === "string" ? onMessage(JSON.parse(e.data)) : onAudio(e.data));
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    state.ready = false; enable(false); setStatus("offline");
    if (e.code !== 1000 && e.code !== 1005) showError(`connection closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
  };
  ws.onerror = () => showError("cannot connect to the server");
}

function send(obj) { if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj)); }

function onMessage(m) {
  switch (m.type) {
    case "session.created":
      state.ready = true; enable(true); setStatus("ready"); pushSettings(); break;
    case "session.updated": break;
    case "speech.started":
      setStatus("listening");
      if (state.answering) flushPlayback();
      break;
    case "input_audio.committed":
      addTurn("user", `🎤 ${m.audio_seconds.toFixed(1)} s of speech`); break;
    case "response.started":
      state.answering = true; state.timings = {}; state.turnText = ""; state.turnStartPlayed = state.played;
      state.turnEl = addTurn("assistant", ""); setStatus("answering"); $("stop").disabled = false; break;
    case "text.delta":
      state.turnText += m.text; if (state.turnEl) state.turnEl.firstChild.textContent = state.turnText; scroll(); break;
    case "timing":
      state.timings[m.stage] = m.seconds; break;
    case "response.done":
      state.answering = false; $("stop").disabled = true;
      if (state.player) state.player.port.postMessage({ type: "end" });
      state.turns.push({ text: m.text, reason: m.reason, audio_seconds: m.audio_seconds, timings: state.timings });
      if (state.turnEl) {
        state.turnEl.firstChild.textContent = m.text || state.turnText || "(no text)";
        state.turnEl.querySelector(".meta").textContent = describe(m, state.timings);
      }
      setStatus(state.listening ? "listening" : "ready"); break;
    case "session.reset": $("transcript").replaceChildren(); break;
    case "error": showError(`${m.code}: ${m.message}`); state.errors.push(m); break;
    case "pong": break;
  }
}

function describe(m, t) {
  const f = (s) => (s === undefined ? "–" : `${Math.round(s * 1000)} ms`);
  const parts = [`first audio ${f(t.time_to_first_audio)}`, `tokenize ${f(t.tokenize)}`, `prefill ${f(t.lm_prefill)}`,
    `LM to first block ${f(t.lm_first_audio_block)}`, `speech decode ${f(t.speech_decode)}`, `total ${f(t.total)}`];
  return `${m.reason === "cancelled" ? "stopped · " : ""}${m.audio_seconds.toFixed(1)} s audio · ` + parts.join(" · ");
}

// --- playback ---------------------------------------------------------------------------------------------
async function ensurePlayback() {
  if (state.playCtx) return;
  const ctx = new AudioContext({ sampleRate: OUTPUT_RATE, latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("/static/worklets.js");
  const player = new AudioWorkletNode(ctx, "player", { outputChannelCount: [1] });
  player.port.onmessage = (e) => {
    state.played = e.data.played;
    if (e.data.underruns !== undefined) state.underruns = e.data.underruns;
  };
  player.connect(ctx.destination);
  state.playCtx = ctx; state.player = player;
}

function onAudio(buf) {
  state.audioBytes += buf.byteLength;
  if (!state.player) return;
  const pcm = new Int16Array(buf);
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  state.player.port.postMessage({ type: "chunk", samples }, [samples.buffer]);
}

function flushPlayback() { if (state.player) state.player.port.postMessage({ type: "flush" }); }

function stopAnswer() {
  if (!state.answering) return;
  const heard = (state.played - state.turnStartPlayed) / OUTPUT_RATE;
  send({ type: "cancel", played_seconds: Math.max(0, heard) });
  flushPlayback();
}

// --- microphone -------------------------------------------------------------------------------------------
async function ensureMic() {
  if (state.capture) return;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
  const ctx = new AudioContext({ latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("/static/worklets.js");
  const node = new AudioWorkletNode(ctx, "capture", { numberOfInputs: 1, numberOfOutputs: 0 });
  node.port.onmessage = (e) => {
    $("level").style.width = `${Math.min(100, Math.round(Math.sqrt(e.data.rms) * 250))}%`;
    if ((state.mode === "hold" && state.holding) || (state.mode === "handsfree" && state.listening)) {
      if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(e.data.pcm);
    }
  };
  ctx.createMediaStreamSource(stream).connect(node);
  state.captureCtx = ctx; state.micStream = stream; state.capture = node;
}

async function startHold(e) {
  e.preventDefault();
  if (!state.ready || state.holding) return;
  try { await ensurePlayback(); await ensureMic(); } catch (err) { showError(`microphone: ${err.message}`); return; }
  stopAnswer();
  state.holding = true; $("talk").classList.add("active"); setStatus("listening");
}

function endHold(e) {
  e.preventDefault();
  if (!state.holding) return;
  state.holding = false; $("talk").classList.remove("active");
  setTimeout(() => send({ type: "input_audio.commit" }), 60); // let the last capture message leave first
}

async function toggleHandsFree() {
  if (!state.ready) return;
  if (state.listening) {
    state.listening = false; $("handsfree").textContent = "Start listening"; $("handsfree").classList.remove("active");
    send({ type: "input_audio.clear" }); setStatus("ready"); return;
  }
  try { await ensurePlayback(); await ensureMic(); } catch (err) { showError(`microphone: ${err.message}`); return; }
  state.listening = true; $("handsfree").textContent = "Stop listening"; $("handsfree").classList.add("active");
  setStatus("listening");
}

function setMode(mode) {
  state.mode = mode; state.listening = false; state.holding = false;
  $("talk").hidden = mode !== "hold"; $("handsfree").hidden = mode !== "handsfree";
  $("handsfree").textContent = "Start listening"; $("handsfree").classList.remove("active");
  send({ type: "input_audio.clear" });
  pushSettings();
}

// --- settings, text input, UI helpers ---------------------------------------------------------------------
function pushSettings() {
  const lang = $("language").value;
  send({ type: "session.update",
    settings: { temperature: +$("temperature").value, top_p: +$("top_p").value, language: lang || null,
                instruction: $("instruction").value, output: $("output").value },
    input: { vad: state.mode === "handsfree", silence_ms: +$("silence_ms").value, barge_in: true } });
}

async function sendText(e) {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !state.ready) return;
  try { await ensurePlayback(); } catch (err) { showError(`audio output: ${err.message}`); }
  stopAnswer();
  addTurn("user", text);
  send({ type: "input_text", text });
  $("text").value = "";
}

function addTurn(role, text) {
  const el = document.createElement("div");
  el.className = `turn ${role}`;
  el.append(document.createTextNode(text));
  const meta = document.createElement("span"); meta.className = "meta"; el.append(meta);
  $("transcript").append(el); scroll();
  return el;
}

function scroll() { $("transcript").scrollTop = $("transcript").scrollHeight; }
function setStatus(s) { $("status").textContent = s; $("status").dataset.state = s; }
function enable(on) {
  for (const id of ["talk", "handsfree", "text", "send"]) $(id).disabled = !on;
  $("stop").disabled = !(on && state.answering);
}
let errorTimer = null;
function showError(msg) {
  $("error").textContent = msg; $("error").hidden = false;
  clearTimeout(errorTimer); errorTimer = setTimeout(() => { $("error").hidden = true; }, 8000);
}

for (const id of ["temperature", "top_p", "silence_ms"]) {
  $(id).addEventListener("input", () => { $(`${id}_v`).textContent = $(id).value; });
  $(id).addEventListener("change", pushSettings);
}
for (const id of ["language", "output", "instruction"]) $(id).addEventListener("change", pushSettings);
$("api_key").value = localStorage.getItem("glm4voice.api_key") || "";
$("api_key").addEventListener("change", () => { localStorage.setItem("glm4voice.api_key", $("api_key").value); connect(); });
for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", () => setMode(r.value));
$("talk").addEventListener("pointerdown", startHold);
for (const ev of ["pointerup", "pointercancel", "pointerleave"]) $("talk").addEventListener(ev, endHold);
$("handsfree").addEventListener("click", toggleHandsFree);
$("stop").addEventListener("click", stopAnswer);
$("textform").addEventListener("submit", sendText);
$("reset").addEventListener("click", () => { stopAnswer(); send({ type: "reset" }); });
$("connect").addEventListener("click", connect);
connect();
