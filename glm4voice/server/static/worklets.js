// AudioWorklet processors of the web UI (loaded with audioWorklet.addModule).
//
// "capture": microphone at the context's rate -> 16 kHz mono 16-bit PCM in 40 ms messages, plus an RMS level.
//   Downsampling averages the input over each output sample's span (a box low-pass), enough for speech.
// "player": a FIFO of float chunks at the context's rate (22,050 Hz) played without gaps; reports how many
//   samples have been played so that a barge-in can tell the server what the user actually heard.

const TARGET_RATE = 16000;
const CAPTURE_CHUNK = 640; // samples at 16 kHz (40 ms)

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.acc = 0; this.count = 0; this.phase = 0;
    this.out = new Int16Array(CAPTURE_CHUNK); this.n = 0; this.sq = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      this.acc += ch[i]; this.count++; this.phase += 1;
      if (this.phase >= this.step) {
        this.phase -= this.step;
        const v = Math.max(-1, Math.min(1, this.acc / this.count));
        this.acc = 0; this.count = 0;
        this.sq += v * v;
        this.out[this.n++] = Math.round(v < 0 ? v * 32768 : v * 32767);
        if (this.n === CAPTURE_CHUNK) {
          this.port.postMessage({ pcm: this.out.buffer, rms: Math.sqrt(this.sq / CAPTURE_CHUNK) }, [this.out.buffer]);
          this.out = new Int16Array(CAPTURE_CHUNK); this.n = 0; this.sq = 0;
        }
      }
    }
    return true;
  }
}

class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; this.offset = 0; this.buffered = 0; this.played = 0; this.started = false;
    this.prebuffer = Math.round(0.12 * sampleRate); // wait for 120 ms before starting a turn (jitter)
    this.ending = false; this.underruns = 0; this.lastReport = 0;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "chunk") { this.queue.push(m.samples); this.buffered += m.samples.length; }
      else if (m.type === "end") { this.ending = true; }
      else if (m.type === "flush") {
        this.queue = []; this.offset = 0; this.buffered = 0; this.started = false; this.ending = false;
        this.port.postMessage({ type: "played", played: this.played, buffered: 0 });
      } else if (m.type === "reset") { this.played = 0; }
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.started && (this.buffered >= this.prebuffer || (this.ending && this.buffered > 0))) this.started = true;
    let i = 0;
    if (this.started) {
      while (i < out.length && this.queue.length) {
        const head = this.queue[0];
        const take = Math.min(out.length - i, head.length - this.offset);
        out.set(head.subarray(this.offset, this.offset + take), i);
        i += take; this.offset += take; this.buffered -= take; this.played += take;
        if (this.offset === head.length) { this.queue.shift(); this.offset = 0; }
      }
      if (i < out.length) { // ran dry: a gap unless the turn is over
        if (!this.ending) this.underruns++;
        this.started = false; this.ending = false;
        this.port.postMessage({ type: "drained", played: this.played, underruns: this.underruns });
      }
    }
    out.fill(0, i);
    if (this.played - this.lastReport >= 2205) { // ~10 reports per second while playing
      this.lastReport = this.played;
      this.port.postMessage({ type: "played", played: this.played, buffered: this.buffered });
    }
    return true;
  }
}

registerProcessor("capture", Capture);
registerProcessor("player", Player);
