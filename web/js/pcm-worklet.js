// AudioWorklet processor: microphone float32 at the AudioContext's rate -> mono s16le chunks of ~100 ms,
// posted to the page with the chunk's peak and RMS (for the level meter). The page sends the chunks as they
// are, at the context rate (usually 48 kHz); the server resamples to 16 kHz with soxr.
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunk = options?.processorOptions?.chunk;
    this.size = Number.isInteger(chunk) && chunk > 0 ? chunk : Math.round(sampleRate / 10);
    this.buffer = new Int16Array(this.size);
    this.count = 0;
    this.peak = 0;
    this.sumSquares = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush" || event.data === "stop") this.flush();
      if (event.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (this.running && channels && channels.length) {
      const first = channels[0];
      const n = channels.length;
      for (let i = 0; i < first.length; i++) {
        let s = first[i];
        if (n > 1) {
          for (let c = 1; c < n; c++) s += channels[c][i];
          s /= n;
        }
        if (!(s === s)) s = 0; // NaN
        s = s > 1 ? 1 : s < -1 ? -1 : s;
        const a = s < 0 ? -s : s;
        if (a > this.peak) this.peak = a;
        this.sumSquares += s * s;
        this.buffer[this.count++] = Math.round(s < 0 ? s * 32768 : s * 32767);
        if (this.count === this.size) this.flush();
      }
    }
    return this.running;
  }

  flush() {
    if (this.count === 0) return;
    const pcm = this.buffer.slice(0, this.count); // a copy: its buffer is transferred to the page
    this.port.postMessage(
      { pcm: pcm.buffer, samples: this.count, peak: this.peak, rms: Math.sqrt(this.sumSquares / this.count) },
      [pcm.buffer],
    );
    this.count = 0;
    this.peak = 0;
    this.sumSquares = 0;
  }
}

registerProcessor("pcm-capture", PcmCapture);
