// The live capture view: polls status.json, shows its text and the frame's state as text,
// reloads the frame when it changed.
"use strict";
const img = document.getElementById("f"), status = document.getElementById("s"), st = document.getElementById("st");
const NAMES = {"counting": "COUNTING", "moving": "MOVING - not counting",
               "out of focus": "OUT OF FOCUS - not counting", "lost": "LOST - not counting"};
async function tick() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    const s = await r.json();
    status.textContent = s.text;
    st.textContent = NAMES[s.state] || s.state || "";
    st.className = (s.state || "").replace(/ /g, "-");
    if (s.seq) img.src = "frame.jpg?" + s.seq;
  } catch (e) { st.textContent = "capture has ended"; st.className = ""; }
  setTimeout(tick, 400);
}
tick();
