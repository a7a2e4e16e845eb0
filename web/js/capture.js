// The speaker page's microphone: getUserMedia -> the AudioWorklet of pcm-worklet.js -> s16le chunks of ~100 ms at
// the AudioContext's rate, each with its sample count and level; and the level meter that shows it.
import { SERVER_RATES } from "./common.js";

// The AudioContext is made first, synchronously inside the click, so the autoplay policy lets it run even when
// the permission prompt takes a while. It runs at the device's rate (usually 48 kHz; 44.1 kHz in some
// set-ups), which the server accepts and resamples to 16 kHz; another rate falls back to a 48 kHz context.
/**
 * Opens the microphone. onChunk({pcm, samples, rms}) gets every chunk; onEnded() runs if the microphone goes away
 * (unplugged or blocked). Resolves to {rate, close()}; rejects, with nothing left open, if it cannot be opened.
 */
export async function openCapture({ onChunk, onEnded }) {
  let ctx = new AudioContext({ latencyHint: "interactive" });
  if (!SERVER_RATES.includes(ctx.sampleRate)) {
    ctx.close();
    ctx = new AudioContext({ latencyHint: "interactive", sampleRate: 48000 });
  }
  let stream = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    await ctx.audioWorklet.addModule("/js/pcm-worklet.js");
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "pcm-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { chunk: Math.round(ctx.sampleRate / 10) },
    });
    const mute = ctx.createGain();
    mute.gain.value = 0; // keeps the graph pulled without playing the microphone back
    source.connect(node).connect(mute).connect(ctx.destination);
    node.port.onmessage = (event) => onChunk(event.data);
    for (const track of stream.getAudioTracks()) track.addEventListener("ended", onEnded);
    await ctx.resume();
    return {
      rate: ctx.sampleRate,
      close() {
        node.port.onmessage = null;
        node.port.postMessage("stop");
        stream.getTracks().forEach((t) => t.stop());
        ctx.close().catch(() => {});
      },
    };
  } catch (err) {
    stream?.getTracks().forEach((t) => t.stop());
    ctx.close().catch(() => {});
    throw err;
  }
}

/** A level meter on `node` (a bar scaled along x): set(rms) shows -60..0 dBFS as 0..1, falling slowly so the meter
 * stays readable; data-hot marks the top tenth. */
export function levelMeter(node) {
  let shown = 0;
  return (rms) => {
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    const value = Math.min(1, Math.max(0, (db + 60) / 60));
    shown = Math.max(value, shown * 0.7);
    node.style.transform = `scaleX(${shown.toFixed(3)})`;
    node.dataset.hot = shown > 0.9 ? "1" : "0";
  };
}
