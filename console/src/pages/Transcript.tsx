// A call's recording in an audio player with its transcript beside it: the line and word
// being spoken highlighted as it plays, and a click on a line or word plays from there.
// The player streams the recording from its URL and seeks by asking for a range of bytes
// (the sandbox's recordings answer Range with 206, as recordings elsewhere do).
import { useEffect, useRef, useState } from "preact/hooks";
import type { Call } from "../api";
import { offset } from "../format";

/** A word of a transcript entry, `start`/`end` in ms from the call's start. */
interface Word {
  word: string;
  start: number;
  end: number;
}

/** A transcript entry as the sandbox and upstream write it. */
interface Line {
  role: string;
  content: string;
  startMs: number;
  words: Word[];
}

/** The call's transcript entries, each placed in the recording (ms from its start). */
export function lines(call: Call): Line[] {
  return (call.transcript_object ?? []).map((entry) => {
    const words = Array.isArray(entry.words) ? (entry.words as Word[]).filter((w) => typeof w.start === "number") : [];
    const began = typeof entry.timestamp === "number" && call.start_timestamp ? entry.timestamp - call.start_timestamp : 0;
    return {
      role: String(entry.role ?? ""),
      content: String(entry.content ?? ""),
      startMs: words.length ? words[0].start : Math.max(0, began),
      words,
    };
  });
}

/** The index of the line spoken at `ms`: the last one begun by then (-1 before the first). */
export function lineAt(all: Line[], ms: number): number {
  let current = -1;
  all.forEach((line, i) => {
    if (line.startMs <= ms) current = i;
  });
  return current;
}

export function RecordingAndTranscript({ call }: { call: Call }) {
  const audio = useRef<HTMLAudioElement>(null);
  const [ms, setMs] = useState(0);
  const [playing, setPlaying] = useState(false);
  const all = lines(call);
  const current = playing || ms > 0 ? lineAt(all, ms) : -1;

  // While playing, follow the audio's clock every frame (timeupdate alone is ~4 times a second).
  useEffect(() => {
    if (!playing) return;
    let frame = requestAnimationFrame(function follow() {
      if (audio.current) setMs(audio.current.currentTime * 1000);
      frame = requestAnimationFrame(follow);
    });
    return () => cancelAnimationFrame(frame);
  }, [playing]);

  // Keep the line being spoken in view.
  useEffect(() => {
    document.querySelector(".transcript li[aria-current='true']")?.scrollIntoView({ block: "nearest" });
  }, [current]);

  const playFrom = (at: number) => {
    const player = audio.current;
    if (!player) return;
    player.currentTime = at / 1000;
    setMs(at);
    void player.play().catch(() => {});
  };

  return (
    <section class="recording" aria-labelledby="recording-title">
      <h2 id="recording-title">Recording and transcript</h2>
      {call.recording_url ? (
        <audio
          ref={audio}
          controls
          preload="metadata"
          src={call.recording_url}
          aria-label="Recording of the call"
          onPlay={() => setPlaying(true)}
          onPause={() => setPlaying(false)}
          onEnded={() => setPlaying(false)}
          onTimeUpdate={(event) => setMs((event.currentTarget as HTMLAudioElement).currentTime * 1000)}
        />
      ) : (
        <p>No recording{call.call_status.toLowerCase() === "ended" ? " for this call" : " yet"}.</p>
      )}
      {all.length ? (
        <ol class="transcript" aria-label="Transcript">
          {all.map((line, i) => (
            <li key={i} class={`${line.role} ${i === current ? "current" : ""}`} aria-current={i === current ? "true" : undefined}>
              <button
                type="button"
                class="at"
                disabled={!call.recording_url}
                onClick={() => playFrom(line.startMs)}
                aria-label={`Play from ${offset(line.startMs)}`}
              >
                {offset(line.startMs)}
              </button>
              <span class="role">{line.role}</span>
              <p class="said">
                {line.words.length
                  ? line.words.map((word, j) => (
                      <span
                        key={j}
                        class={i === current && word.start <= ms && ms < word.end ? "word spoken" : "word"}
                        onClick={() => call.recording_url && playFrom(word.start)}
                      >
                        {word.word}{" "}
                      </span>
                    ))
                  : line.content}
              </p>
            </li>
          ))}
        </ol>
      ) : call.transcript ? (
        <p class="said">{call.transcript}</p>
      ) : (
        <p>No transcript{call.call_status.toLowerCase() === "ended" ? "" : " yet"}.</p>
      )}
    </section>
  );
}
