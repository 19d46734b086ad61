// The live capture view: polls status.json, shows its text as text, reloads the frame when it changed.
"use strict";
const img = document.getElementById("f"), status = document.getElementById("s");
document.body.style.cssText = "margin:0;background:#222;color:#eee;font:14px sans-serif";
img.style.cssText = "max-width:100%;display:block";
status.style.padding = "6px";
async function tick() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    const s = await r.json();
    status.textContent = s.text;
    if (s.seq) img.src = "frame.jpg?" + s.seq;
  } catch (e) { status.textContent = "capture has ended"; }
  setTimeout(tick, 400);
}
tick();
