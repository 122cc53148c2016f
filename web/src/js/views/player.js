// Play a recording in the page: xterm.js draws it; play/pause, speed and a
// position slider. The proxy gives the recording as events
// {t: ms since the start, type: "o" (output) | "r" (resize, "COLSxROWS"), data}.

import * as api from "../api.js";
import { formatDuration, h, message, replace } from "../dom.js";

const TICK_MS = 33;
const SPEEDS = [0.5, 1, 2, 4, 8, 16];

function parseSize(data) {
  const m = /^(\d+)x(\d+)$/.exec(data || "");
  return m ? { cols: Math.max(2, Math.min(500, +m[1])), rows: Math.max(1, Math.min(300, +m[2])) } : null;
}

export function render(container, ctx) {
  const [sid] = ctx.params;
  const status = h("div", { class: "form-status" }, message("info", "Loading the recording…"));
  container.append(
    h("h1", {}, "Recording ", h("span", { class: "mono small" }, sid)),
    h("p", {}, h("a", { href: "/web/recordings" }, "← All recordings")),
    status,
  );
  if (typeof window.Terminal !== "function") {
    replace(status, message("error", "The terminal (xterm.js) did not load: reload the page."));
    return null;
  }
  let player = null;
  let alive = true;
  api.getRecording(sid).then(
    (doc) => {
      if (!alive) return;
      replace(status);
      player = makePlayer(container, doc.events || []);
    },
    (err) => {
      if (alive) ctx.handleError(err, status);
    },
  );
  return () => {
    alive = false;
    if (player) player.dispose();
  };
}

function makePlayer(container, events) {
  events = events.filter((e) => e && typeof e.t === "number").sort((a, b) => a.t - b.t);
  const duration = events.length ? events[events.length - 1].t : 0;
  const first = events.find((e) => e.type === "r");
  const initial = (first && parseSize(first.data)) || { cols: 80, rows: 24 };

  const playButton = h("button", { type: "button", id: "player-play", class: "primary" }, "Play");
  const speed = h(
    "select",
    { id: "player-speed", "aria-label": "Speed" },
    SPEEDS.map((s) => h("option", { value: s, selected: s === 1 }, `${s}×`)),
  );
  const slider = h("input", {
    type: "range",
    id: "player-position",
    min: 0,
    max: Math.max(duration, 1),
    step: 1,
    value: 0,
    "aria-label": "Position",
  });
  const clock = h("span", { class: "mono", id: "player-time" });
  const box = h("div", { class: "terminal player", id: "player-terminal" });
  container.append(h("div", { class: "player-bar" }, playButton, speed, slider, clock), box);

  const term = new window.Terminal({
    cols: initial.cols,
    rows: initial.rows,
    disableStdin: true,
    cursorBlink: false,
    scrollback: 1000,
    fontFamily: '"DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace',
    fontSize: 14,
  });
  term.open(box);

  let position = 0; // ms into the recording drawn so far
  let next = 0; // index of the first event not yet drawn
  let playing = false;
  let timer = null;
  let last = 0;

  function showClock() {
    slider.value = String(Math.round(position));
    clock.textContent = `${formatDuration(position)} / ${formatDuration(duration)}`;
    box.dataset.position = String(Math.round(position));
  }

  function drawUntil(target) {
    if (target < position) {
      term.reset();
      term.resize(initial.cols, initial.rows);
      next = 0;
    }
    while (next < events.length && events[next].t <= target) {
      const event = events[next++];
      if (event.type === "o") {
        term.write(event.data);
      } else if (event.type === "r") {
        const size = parseSize(event.data);
        if (size) term.resize(size.cols, size.rows);
      }
    }
    position = target;
    showClock();
  }

  function setPlaying(on) {
    playing = on;
    playButton.textContent = on ? "Pause" : "Play";
    box.dataset.state = on ? "playing" : position >= duration ? "ended" : "paused";
    clearTimeout(timer);
    if (on) {
      last = performance.now();
      timer = setTimeout(tick, TICK_MS);
    }
  }

  function tick() {
    const now = performance.now();
    const target = position + (now - last) * Number(speed.value);
    last = now;
    if (target >= duration) {
      drawUntil(duration);
      setPlaying(false);
      return;
    }
    drawUntil(target);
    timer = setTimeout(tick, TICK_MS);
  }

  playButton.addEventListener("click", () => {
    if (playing) {
      setPlaying(false);
      return;
    }
    if (position >= duration) drawUntil(-1); // from the start again
    setPlaying(true);
  });
  slider.addEventListener("input", () => drawUntil(Number(slider.value)));
  showClock();
  box.dataset.state = "paused";
  return {
    dispose() {
      clearTimeout(timer);
      term.dispose();
    },
  };
}
