// The review page. Every value from the server reaches the DOM as text (textContent, or elements
// built with createElement): a name or label holding markup stays text. No inline script: the
// server's Content-Security-Policy allows scripts from this server only.
"use strict";
const CONFIG = JSON.parse(document.getElementById("config").textContent);
let S = null, cur = 0;
const $ = id => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells, tag) {
  const tr = document.createElement("tr");
  cells.forEach(c => tr.appendChild(el(tag || "td", c)));
  return tr;
}
function say(text, bad) { $("status").textContent = text; $("status").className = bad ? "err" : "ok"; }

async function load(keepId) {
  const r = await fetch("api/state?all=" + ($("all").checked ? 1 : 0), {cache: "no-store"});
  S = await r.json();
  if (!r.ok) { say(S.error || r.statusText, true); return; }
  const i = S.cells.findIndex(c => c.id === keepId);
  cur = i >= 0 ? i : Math.max(0, S.cells.findIndex(c => c.reviewed_label === null));
  draw();
}

function draw() {
  const s = S.session, t = S.tally;
  $("title").textContent = `sample ${s.sample || "-"} · session ${s.id}`;
  $("progress").textContent = `${t.flagged_reviewed}/${t.flagged} flagged reviewed` +
    (s.signed_by ? ` · signed by ${s.signed_by}` : "");
  $("banner").style.display = s.unvalidated ? "block" : "none";
  $("banner").textContent = "UNVALIDATED differential: many cells are unlike the cells the model was trained on. Review every cell (tick 'all cells').";
  const counts = $("counts");
  counts.replaceChildren(row(["", "analyser", "after review"]));
  S.wbc_labels.forEach(k => counts.appendChild(row([k, t.machine[k] || 0, t.final[k] || 0])));
  const total = row(["white cells", t.wbc_machine, t.wbc_final]);
  total.lastChild.id = "wbc-final";
  counts.appendChild(total);
  $("strip").replaceChildren();
  S.cells.forEach((c, i) => {
    const im = document.createElement("img");
    im.src = "crop/" + c.id; im.title = `#${c.id} ${c.reviewed_label || c.label}`;
    im.className = (c.reviewed_label ? "done" : "") + (i === cur ? " cur" : "");
    im.onclick = () => { cur = i; draw(); };
    $("strip").appendChild(im);
  });
  const c = S.cells[cur];
  const info = $("info");
  if (!c) {
    $("crop").removeAttribute("src");
    info.textContent = S.tally.cells ? "No flagged cells. Tick 'all cells' to look at every cell." : "Empty session: no cells were counted.";
    $("labels").replaceChildren(); return;
  }
  $("crop").src = "crop/" + c.id; $("crop").className = c.ood ? "ood" : "";
  $("where").textContent = `cell ${cur + 1} of ${S.cells.length}`;
  const head = el("div");
  head.id = "cell-id"; head.dataset.cell = String(c.id);
  head.append(el("b", `#${c.id}`), " analyser: ", el("b", c.label),
              ` ${c.confidence.toFixed(2)} · ${c.observations || 1} frame(s)`);
  if (c.ood) head.append(" · ", el("span", "out of distribution", "err"));
  const top = el("div");
  Object.entries(c.probs).sort((a, b) => b[1] - a[1]).slice(0, 3).forEach(([k, p]) => {
    const bar = el("span", null, "bar");
    bar.style.width = Math.round(p * 120) + "px";
    top.append(`${k} ${Number(p).toFixed(2)}`, bar, document.createElement("br"));
  });
  const decision = el("div");
  decision.id = "decision";
  if (c.reviewed_label) decision.append("decision: ", el("b", c.reviewed_label), ` by ${c.reviewer}`);
  else decision.textContent = "not reviewed";
  info.replaceChildren(head, el("div", c.review_reason || ""), top, decision);
  $("labels").replaceChildren();
  S.labels.forEach((k, i) => {
    const b = el("button", `${i + 1}  ${k}`);
    b.dataset.label = k;
    b.className = (k === c.label ? "machine" : "") + (k === c.reviewed_label ? " chosen" : "");
    b.onclick = () => decide(k);
    $("labels").appendChild(b);
  });
}

class Refused extends Error { constructor(msg, cell) { super(msg); this.cell = cell; } }

async function post(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  let j = {};
  try { j = await r.json(); } catch (e) { /* a refusal without a JSON body */ }
  if (!r.ok) throw new Refused(j.error || r.statusText, j.cell);
  return j;
}

// A refusal that names a cell (someone else changed it: 409): show that cell as it now is.
async function refused(e) {
  if (e.cell) await load(e.cell.id);
  say(e.message, true);
}

async function decide(label) {
  const c = S.cells[cur];
  if (!c) return;
  try {
    let r;
    if (S.session.signed_by) {
      const reason = prompt(`Signed off by ${S.session.signed_by}. Why amend cell ${c.id} to ${label}?`);
      if (!reason) return;
      r = await post("api/amend", {cell: c.id, label, version: c.version, reason});
    } else {
      r = await post("api/decide", {cell: c.id, label, version: c.version});
    }
    const next = S.cells.slice(cur + 1).find(x => x.reviewed_label === null);
    await load(next ? next.id : c.id);
    say(`saved: cell ${r.cell} ${r.reviewed_label === r.machine_label ? "confirmed " + r.reviewed_label : r.machine_label + " → " + r.reviewed_label}`);
  } catch (e) { await refused(e); }
}

async function undo() {
  try { const r = await post("api/undo", {}); await load(r.cell); say(`undone: cell ${r.cell}`); }
  catch (e) { await refused(e); }
}

$("reviewer").textContent = CONFIG.reviewer;
$("all").checked = !!CONFIG.all;
$("signoff").onclick = async () => {
  try { const r = await post("api/signoff", {}); await load(S.cells[cur] && S.cells[cur].id); say(`signed off by ${r.signed_by}`); }
  catch (e) { say(e.message, true); }
};
$("all").onchange = () => load(S && S.cells[cur] && S.cells[cur].id);

document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT" && e.target.type === "text") return;
  if (e.key >= "1" && e.key <= "8") { decide(S.labels[+e.key - 1]); e.preventDefault(); }
  else if (e.key === "Enter" || e.key === "c") { const c = S.cells[cur]; if (c) decide(c.reviewed_label || c.label); e.preventDefault(); }
  else if (e.key === "u") undo();
  else if (e.key === "ArrowRight" || e.key === "j") { cur = Math.min(cur + 1, S.cells.length - 1); draw(); }
  else if (e.key === "ArrowLeft" || e.key === "k") { cur = Math.max(cur - 1, 0); draw(); }
});
load();
