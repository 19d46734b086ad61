// The review page: every cell of the session in a gallery grouped by class (after review), the
// current cell larger beside it, the differential recomputed at each decision, the sign-off rules
// as the server states them, and a confirmation screen before signing.
// Every value from the server reaches the DOM as text (textContent, or elements built with
// createElement): a name or label holding markup stays text. No inline script or style: the
// server's Content-Security-Policy allows scripts and styles from this server only.
// The server decides what is allowed (sign-off rules, read-only after sign-off, who signs); the
// page only states it and offers the controls that can work.
"use strict";
const CONFIG = JSON.parse(document.getElementById("config").textContent);
const $ = id => document.getElementById(id);

let S = null;            // /api/state: session, classes, cells, check, versions
let byId = new Map();    // cell id -> cell
let order = [];          // cell ids in display order (groups by class, then id), after the filters
let cur = null;          // the current cell's id
const selected = new Set();
let anchor = null;       // where a Shift+arrow selection started
let amendReason = "";    // set by the amend dialog: decisions then go to api/amend with it
let tiles = new Map();   // cell id -> tile element
let observer = null;     // loads a tile's crop when it scrolls into view
// Decisions and undos run one after another, in the order of the keys or taps that asked for them:
// a key pressed while the previous decision is on its way applies to the cell the page then shows.
let queue = Promise.resolve();
function serial(fn) { queue = queue.then(fn, fn); return queue; }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  cells.forEach(c => tr.appendChild(el("td", c)));
  return tr;
}
function say(text, bad) { $("status").textContent = text; $("status").className = bad ? "err" : "ok"; }
const cls = label => S.classes.find(c => c.label === label);
const final = c => c.reviewed_label || c.label;
const name = label => (cls(label) || {name: label}).name;
const signed = () => S.check.signed_version > 0;
const canDecide = () => !signed() || amendReason !== "";

// ------------------------------------------------------------------ loading

async function load(keepId) {
  const r = await fetch("api/state?all=1", {cache: "no-store"});
  const j = await r.json();
  if (!r.ok) { say(j.error || r.statusText, true); return; }
  S = j;
  byId = new Map(S.cells.map(c => [c.id, c]));
  if (keepId !== undefined && byId.has(keepId)) cur = keepId;
  build();
}

async function refreshCheck() {
  try {
    const r = await fetch("api/check", {cache: "no-store"});
    if (r.ok) { S.check = await r.json(); header(); rules(); labels(); }
  } catch (e) { /* the server went away: the decision itself was answered; the rules show as they were */ }
}

function visible(c) {
  const f = $("filter").value, rv = $("reviewed").value;
  if (f === "flagged" && !c.review) return false;
  if (f === "ood" && !c.ood) return false;
  if (f === "low" && !(S.session.review_threshold !== null && c.confidence < S.session.review_threshold)) return false;
  if (rv === "todo" && c.reviewed_label !== null) return false;
  if (rv === "done" && c.reviewed_label === null) return false;
  return true;
}

// ------------------------------------------------------------------ drawing

function build() {
  const rank = new Map(S.classes.map((k, i) => [k.label, i]));
  const shown = S.cells.filter(visible);
  shown.sort((a, b) => (rank.get(final(a)) - rank.get(final(b))) || (a.id - b.id));
  order = shown.map(c => c.id);
  for (const id of [...selected]) if (!order.includes(id)) selected.delete(id);
  if (!order.includes(cur)) {
    const todo = shown.find(c => c.reviewed_label === null && c.review) || shown.find(c => c.reviewed_label === null);
    cur = todo ? todo.id : (order.length ? order[0] : null);
  }
  if (observer) observer.disconnect();
  observer = new IntersectionObserver(entries => entries.forEach(e => {
    if (!e.isIntersecting) return;
    const im = e.target;
    im.src = im.dataset.src;
    observer.unobserve(im);
  }), {root: $("gallery"), rootMargin: "300px 0px"});
  const gallery = $("gallery");
  const parts = [];
  tiles = new Map();
  let group = null, grid = null;
  for (const c of shown) {
    const label = final(c);
    if (label !== group) {
      group = label;
      const k = cls(label);
      const n = shown.filter(x => final(x) === label).length;
      const h = el("h3", `${k.name} (${n})`);
      h.dataset.class = label;
      if (k.role !== "wbc") h.append(" ", el("span", k.role === "removed" ? "removed from the count"
        : k.role === "apart" ? "reported apart" : "not in the differential", "role"));
      grid = el("div", null, "grid");
      grid.dataset.class = label;
      parts.push(h, grid);
    }
    const t = tile(c);
    grid.appendChild(t);
  }
  if (!shown.length) parts.push(el("p", S.cells.length ? "No cell matches these filters." :
    "Empty session: no cells were counted."));
  gallery.replaceChildren(...parts);
  tiles.forEach(t => observer.observe(t.firstChild));
  $("shown").textContent = `${shown.length} of ${S.cells.length} cells shown`;
  header(); side(); counts(); rules(); labels(); selectionText();
}

function tile(c) {
  const t = el("button", null, "tile");
  t.type = "button";
  t.tabIndex = -1;
  t.dataset.cell = String(c.id);
  t.setAttribute("aria-label", `cell ${c.id}`);
  const im = document.createElement("img");
  im.alt = "";  // the button is labelled; an alt text would be laid out in every tile not yet loaded
  im.dataset.src = "crop/" + c.id;  // loaded when it scrolls into view (IntersectionObserver)
  t.append(im, el("span", `#${c.id}`, "n"));
  paint(t, c);
  t.addEventListener("click", e => tap(c.id, e));
  t.addEventListener("dblclick", () => { move(c.id); zoom(); });
  tiles.set(c.id, t);
  return t;
}

function paint(t, c) {
  t.classList.toggle("flag", !!c.review && !c.ood);
  t.classList.toggle("ood", !!c.ood);
  t.classList.toggle("done", c.reviewed_label !== null);
  t.classList.toggle("changed", c.reviewed_label !== null && c.reviewed_label !== c.label);
  t.classList.toggle("sel", selected.has(c.id));
  t.classList.toggle("cur", c.id === cur);
  t.tabIndex = c.id === cur ? 0 : -1;
  t.title = `#${c.id} analyser: ${c.label} ${c.confidence.toFixed(2)}` +
    (c.reviewed_label ? ` · review: ${c.reviewed_label}` : "") + (c.ood ? " · out of distribution" : "");
}

function header() {
  const s = S.session, k = S.check;
  $("title").textContent = `${s.sample || "-"} · session ${s.id}`;
  $("progress").textContent = `${k.flagged - k.flagged_left}/${k.flagged} flagged reviewed · ` +
    `${k.cells - k.unreviewed}/${k.cells} cells`;
  let state = "not signed";
  if (signed()) state = `signed v${k.signed_version} by ${k.signed_by}` +
    (k.pending ? ` · ${k.pending} amendment(s) not signed` : "") + (amendReason ? " · amending" : "");
  $("state").textContent = state;
  $("amend").hidden = !signed() || amendReason !== "";
  $("signoff").hidden = k.closed;
  $("signoff").textContent = signed() ? `Sign version ${k.next_version}…` : "Sign…";
  const b = $("banner"), parts = [];
  if (s.unvalidated) {
    // the first clause of the trust gate's message; the whole of it is the banner's tooltip and in the report
    const msg = s.trust_message || "many cells are unlike the cells the model was trained on";
    parts.push("UNVALIDATED differential (" + msg.split(";")[0] + "): review every cell before signing.");
    b.title = msg;
  }
  if (k.closed) parts.push(`Signed off by ${k.signed_by} (version ${k.signed_version}): read-only. Amend… to ` +
    "change it (with a reason; it makes a new version).");
  else if (amendReason) parts.push(`Amending version ${k.signed_version}: ${amendReason}`);
  b.hidden = !parts.length;
  b.textContent = parts.join(" ");
  b.className = s.unvalidated ? "" : k.closed ? "ok" : "warn";
}

function side() {
  const c = byId.get(cur);
  const info = $("info");
  if (!c) {
    $("crop").removeAttribute("src");
    info.replaceChildren(el("div", "No cell to show."));
    return;
  }
  $("crop").src = "crop/" + c.id;
  $("crop").className = c.ood ? "ood" : "";
  const head = el("div");
  head.id = "cell-id"; head.dataset.cell = String(c.id);
  // #id is the log's cell id, as in capture's summary and the report; the position is only where it is here
  head.append(el("b", `cell #${c.id}`), ` · ${order.indexOf(c.id) + 1}/${order.length} here`);
  const who = el("div");
  who.append("analyser: ", el("b", c.label), ` ${c.confidence.toFixed(2)} · ${c.observations || 1} frame(s)`);
  if (c.ood) who.append(" · ", el("span", "out of distribution", "err"));
  const top = el("div", "top: " + c.top.map(([k, p]) => `${k} ${Number(p).toFixed(2)}`).join(", "));
  const decision = el("div");
  decision.id = "decision";
  if (c.reviewed_label) decision.append("decision: ", el("b", name(c.reviewed_label)), ` by ${c.reviewer}`);
  else decision.textContent = "not reviewed";
  info.replaceChildren(head, decision, who, el("div", c.review_reason || "", "reason"), top);
}

function labels() {
  const box = $("labels");
  const c = byId.get(cur);
  if (!canDecide()) {
    const msg = S.check.closed ? `Signed (version ${S.check.signed_version}): read-only.`
      : `Version ${S.check.signed_version} is signed: give a reason (Amend…) to change more.`;
    box.replaceChildren(el("div", msg, "readonly"));
    return;
  }
  const target = selected.size ? `${selected.size} selected` : (c ? `cell #${c.id}` : "");
  const buttons = S.classes.map(k => {
    const b = el("button", `${k.key}  ${k.label.replace("_", " ")}`);
    b.type = "button";
    b.dataset.label = k.label;
    b.title = `${k.name} → ${target} (key ${k.key})`;
    b.className = (c && k.label === c.label ? "machine" : "") + (c && k.label === c.reviewed_label ? " chosen" : "") +
      (k.role === "removed" ? " removed" : k.role === "apart" ? " apart" : "");
    b.addEventListener("click", () => serial(() => decideAll(k.label)));
    return b;
  });
  box.replaceChildren(...buttons);
}

// The differential as it now stands: white cells (the model's classes and those a reviewer added),
// and apart from it erythroblasts, platelets, smudge cells and the cells removed from the count.
function tallies() {
  const machine = {}, fin = {};
  S.cells.forEach(c => { machine[c.label] = (machine[c.label] || 0) + 1; fin[final(c)] = (fin[final(c)] || 0) + 1; });
  const wbc = S.classes.filter(k => k.role === "wbc");
  const wm = wbc.reduce((n, k) => n + (machine[k.label] || 0), 0);
  const wf = wbc.reduce((n, k) => n + (fin[k.label] || 0), 0);
  return {machine, fin, wm, wf};
}

function diffTable(table) {
  const t = tallies();
  const pct = (n, d) => d ? (100 * n / d).toFixed(1) + "%" : "-";
  const head = document.createElement("tr");
  ["", "analyser", "review", "%"].forEach(h => head.appendChild(el("th", h)));
  const rows = [head];
  S.classes.filter(k => k.role === "wbc" && (k.model || t.fin[k.label])).forEach(k => {
    const r = row([k.label.replace("_", " "), k.model ? t.machine[k.label] || 0 : "-", t.fin[k.label] || 0,
                   pct(t.fin[k.label] || 0, t.wf)]);
    r.dataset.label = k.label;
    rows.push(r);
  });
  const total = row(["white cells", t.wm, t.wf, ""], "total");
  total.children[2].id = table.id === "counts" ? "wbc-final" : "confirm-wbc";
  rows.push(total);
  S.classes.filter(k => k.role !== "wbc" && (k.model || t.fin[k.label])).forEach(k => {
    const what = k.role === "removed" ? "removed" : k.role === "apart" ? "apart" : "not in %";
    const r = row([`${k.label} (${what})`, k.model ? t.machine[k.label] || 0 : "-", t.fin[k.label] || 0, ""], "aside");
    r.dataset.label = k.label;
    rows.push(r);
  });
  table.replaceChildren(...rows);
}
function counts() { diffTable($("counts")); }

// The sign-off rules, as the server counts them (api/check).
function ruleItems() {
  const k = S.check, items = [];
  items.push([k.flagged_left === 0, `every flagged cell reviewed (${k.flagged - k.flagged_left} of ${k.flagged})`]);
  if (k.unvalidated) items.push([k.unreviewed === 0,
    `UNVALIDATED session: every cell reviewed (${k.cells - k.unreviewed} of ${k.cells})`]);
  if (k.count_target !== null) items.push([!k.short, k.short
    ? `short count: ${k.wbc} white cells after review, target ${k.count_target}: acknowledge it when signing`
    : `count target reached: ${k.wbc} of ${k.count_target} white cells`]);
  return items;
}
function rules() {
  const ul = el("ul");
  ul.append(el("li", "Sign-off needs:"));
  ruleItems().forEach(([ok, text]) => ul.appendChild(el("li", text, ok ? "yes" : "no")));
  if (S.versions.length) ul.appendChild(el("li", "signed: " + S.versions.map(v => `v${v.version} ${v.by}`).join(", ")));
  $("rules").replaceChildren(ul);
}

function selectionText() {
  $("selection").textContent = selected.size ? `${selected.size} selected (Esc clears)` : "";
}

// Moving the cursor repaints two tiles, not the gallery.
function move(id, extend) {
  if (id === null || id === undefined) return;
  const old = tiles.get(cur);
  if (extend) {
    if (anchor === null) anchor = cur;
    const a = order.indexOf(anchor), b = order.indexOf(id);
    selected.clear();
    order.slice(Math.min(a, b), Math.max(a, b) + 1).forEach(x => selected.add(x));
  } else anchor = null;
  cur = id;
  if (old) paint(old, byId.get(Number(old.dataset.cell)));
  const t = tiles.get(cur);
  if (extend) tiles.forEach((tt, k) => paint(tt, byId.get(k)));
  else if (t) paint(t, byId.get(cur));
  if (t) {
    t.scrollIntoView({block: "nearest"});
    if (document.activeElement && document.activeElement.classList.contains("tile")) t.focus({preventScroll: true});
  }
  side(); labels(); selectionText();
}

function toggle(id) {
  if (selected.has(id)) selected.delete(id); else selected.add(id);
  const t = tiles.get(id);
  if (t) paint(t, byId.get(id));
  selectionText(); labels();
}

function tap(id, e) {
  if (e.ctrlKey || e.metaKey || $("select-mode").getAttribute("aria-pressed") === "true") { toggle(id); move(id); }
  else if (e.shiftKey) move(id, true);
  else move(id);
}

// Up and down keep the column within a class's grid and go on into the next or previous class.
function vertical(dir) {
  const t = tiles.get(cur);
  if (!t) return cur;
  const grid = t.parentElement, items = [...grid.children];
  const top = items[0].offsetTop;
  const cols = Math.max(1, items.filter(x => x.offsetTop === top).length);
  const i = items.indexOf(t), col = i % cols;
  const j = i + dir * cols;
  if (j >= 0 && j < items.length) return Number(items[j].dataset.cell);
  const grids = [...$("gallery").querySelectorAll(".grid")];
  const g = grids[grids.indexOf(grid) + dir];
  if (!g) return cur;
  const other = [...g.children];
  if (dir > 0) return Number(other[Math.min(col, other.length - 1)].dataset.cell);
  const lastTop = other[other.length - 1].offsetTop;
  const lastRow = other.filter(x => x.offsetTop === lastTop);
  return Number(lastRow[Math.min(col, lastRow.length - 1)].dataset.cell);
}

// ------------------------------------------------------------------ decisions

class Refused extends Error { constructor(msg, cell) { super(msg); this.cell = cell; } }

async function post(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  let j = {};
  try { j = await r.json(); } catch (e) { /* a refusal without a JSON body */ }
  if (!r.ok) throw new Refused(j.error || r.statusText, j.cell);
  return j;
}

function apply(cellJson) {  // the server's view of a cell replaces ours
  const c = byId.get(cellJson.id);
  if (c) Object.assign(c, cellJson);
}

// label: one class for every target; null: confirm each target's own label.
async function decideAll(label) {
  if (!S) return;
  if (!canDecide()) {
    say(S.check.closed ? `signed off by ${S.check.signed_by}: read-only (Amend… to change it)`
      : "give the amendment's reason first (Amend…)", true);
    return;
  }
  const targets = selected.size ? order.filter(id => selected.has(id)) : (cur !== null ? [cur] : []);
  if (!targets.length) return;
  let last = null, done = 0;
  try {
    for (const id of targets) {
      const c = byId.get(id);
      const to = label || c.reviewed_label || c.label;
      const body = {cell: id, label: to, version: c.version};
      const r = amendReason ? await post("api/amend", {...body, reason: amendReason}) : await post("api/decide", body);
      c.reviewed_label = r.reviewed_label; c.reviewer = r.reviewer; c.version = r.version;
      last = r; done++;
    }
    selected.clear();
    const after = nextTodo(targets[targets.length - 1]);
    build();
    if (after !== null && order.includes(after)) move(after);
    await refreshCheck();  // the rules and progress agree with the page before it says saved
    if (done === 1) say(`saved: cell ${last.cell} ${last.reviewed_label === last.machine_label
      ? "confirmed " + last.reviewed_label : last.machine_label + " → " + last.reviewed_label}`);
    else say(`saved: ${done} cells` + (label ? ` → ${label}` : " confirmed"));
  } catch (e) {
    if (e.cell) apply(e.cell);
    build();
    if (e.cell) move(e.cell.id);
    await refreshCheck();
    say((done ? `saved ${done} of ${targets.length}; then refused: ` : "") + e.message, true);
  }
}

// The next cell not reviewed after `id` in the display order (before the decision moved it).
function nextTodo(id) {
  const i = order.indexOf(id);
  const rest = order.slice(i + 1).concat(order.slice(0, i));
  const n = rest.find(x => byId.get(x).reviewed_label === null);
  return n === undefined ? id : n;
}

async function undo() {
  if (!canDecide() || amendReason) { say("nothing to undo here: the session is signed", true); return; }
  try {
    const r = await post("api/undo", {});
    const c = byId.get(r.cell);
    if (c) { c.reviewed_label = r.reviewed_label; c.reviewer = r.reviewer; c.version = r.version; }
    build(); move(r.cell);
    await refreshCheck();
    say(`undone: cell ${r.cell}`);
  } catch (e) {
    if (e.cell) { apply(e.cell); build(); move(e.cell.id); }
    await refreshCheck();
    say(e.message, true);
  }
}

// ------------------------------------------------------------------ dialogs

function zoom() {
  const c = byId.get(cur);
  if (!c) return;
  const im = $("zoom-img");
  im.src = "crop/" + c.id;
  const box = c.box && c.box[0] !== null ? ` box (${c.box[0]}, ${c.box[1]})-(${c.box[2]}, ${c.box[3]})` : "";
  $("zoom-note").textContent = `Cell #${c.id}, analyser ${c.label} ${c.confidence.toFixed(2)}` +
    (c.reviewed_label ? `, review ${c.reviewed_label}` : "") + `. The field around it is not stored in the log: ` +
    `shown is the cell's crop as capture kept it (a square around the cell with the red cells next to it), from ` +
    `frame ${c.frame}${box}, seen in ${c.observations || 1} frame(s).`;
  $("zoom").showModal();
}

async function openConfirm() {
  await refreshCheck();
  const k = S.check;
  $("confirm-title").textContent = signed() ? `Sign version ${k.next_version} (amended)` : "Sign off (version 1)";
  $("confirm-rules").replaceChildren(...ruleItems().map(([ok, t]) => el("li", t, ok ? "yes" : "no")),
    el("li", `signed by: ${CONFIG.reviewer} (this server's reviewer)`));
  diffTable($("confirm-diff"));
  const changed = S.cells.filter(c => c.reviewed_label !== null && c.reviewed_label !== c.label);
  const confirmed = S.cells.filter(c => c.reviewed_label !== null && c.reviewed_label === c.label).length;
  const box = $("confirm-changes");
  const list = el("ul");
  changed.slice(0, 200).forEach(c => list.appendChild(el("li", `#${c.id} ${c.label} → ${c.reviewed_label}`)));
  if (changed.length > 200) list.appendChild(el("li", `… and ${changed.length - 200} more`));
  box.replaceChildren(el("div", `${confirmed} confirmed, ${changed.length} reclassified` +
    (k.pending ? `; ${k.pending} amendment(s) since version ${k.signed_version}` : "") + "."), list);
  $("short-row").hidden = !k.short;
  $("short-ack").checked = false;
  $("short-text").textContent = `Short count: ${k.wbc} white cells after review, below the target of ` +
    `${k.count_target}. I sign it as a short count.`;
  $("confirm-status").textContent = k.blockers.length ? "Not yet: " + k.blockers.join("; ") : "";
  $("confirm-status").className = k.blockers.length ? "err" : "";
  $("confirm").showModal();
  $("confirm-sign").focus();
}

async function sign() {
  try {
    const r = await post("api/signoff", {short_count: $("short-ack").checked ? 1 : 0});
    $("confirm").close();
    amendReason = "";
    await load(cur);
    say(`signed off by ${r.signed_by} (version ${r.version})`);
  } catch (e) {
    $("confirm-status").textContent = "Refused: " + e.message;
    $("confirm-status").className = "err";
  }
}

function openAmend() {
  $("amend-what").textContent = `Version ${S.check.signed_version} was signed by ${S.check.signed_by}. ` +
    `Changes from here are amendments, each kept with this reason; signing them makes version ` +
    `${S.check.next_version}, and version ${S.check.signed_version} stays in the report.`;
  $("amend-status").textContent = "";
  $("amend-dialog").showModal();
  $("amend-reason").focus();
}

function startAmend() {
  const reason = $("amend-reason").value.trim();
  if (!reason) { $("amend-status").textContent = "An amendment needs a reason."; $("amend-status").className = "err"; return; }
  amendReason = reason;
  $("amend-dialog").close();
  header(); labels();
  say(`amending: ${reason}`);
}

function help() {
  const keys = [["←→↑↓", "move (Home, End)"], ["Shift+arrows", "select a range"], ["Space", "select / unselect"],
    ["Ctrl+A", "select every cell shown"], ["Esc", "clear the selection"], ["Enter, c", "confirm the analyser's call"],
    ["u", "undo your last decision"], ["v", "larger view"], ["f, g", "next filter (show, review)"],
    ["S", "sign (confirmation screen)"], ["?", "this help"]];
  S.classes.forEach(k => keys.push([k.key, `${k.name} (${{wbc: "white cell, in the differential",
    other: "not in the differential", apart: "reported apart", removed: "removed from the count"}[k.role]})`]));
  $("help-keys").replaceChildren(...keys.map(([k, t]) => {
    const tr = document.createElement("tr");
    const td = el("td"); td.appendChild(el("kbd", k));
    tr.append(td, el("td", t));
    return tr;
  }));
  $("help-rules").textContent = "Sign-off needs every flagged cell reviewed; an UNVALIDATED session needs every cell " +
    "reviewed; a short count must be acknowledged. After sign-off the session is read-only; an amendment asks for a " +
    "reason and is signed as a new version, the old one kept.";
  $("help").showModal();
}

// ------------------------------------------------------------------ wiring

function cycle(select) {
  const s = $(select);
  s.selectedIndex = (s.selectedIndex + 1) % s.options.length;
  build();
}

document.addEventListener("keydown", e => {
  if (!S || document.querySelector("dialog[open]")) return;  // a dialog has the keys
  const t = e.target;
  if (t.tagName === "TEXTAREA" || t.tagName === "SELECT" || (t.tagName === "INPUT" && t.type === "text")) return;
  const key = e.key;
  const i = order.indexOf(cur);
  if (key === "ArrowRight" || key === "j") move(order[Math.min(i + 1, order.length - 1)], e.shiftKey);
  else if (key === "ArrowLeft" || key === "k") move(order[Math.max(i - 1, 0)], e.shiftKey);
  else if (key === "ArrowDown") move(vertical(1), e.shiftKey);
  else if (key === "ArrowUp") move(vertical(-1), e.shiftKey);
  else if (key === "Home") move(order[0]);
  else if (key === "End") move(order[order.length - 1]);
  else if (key === " " && t.tagName !== "BUTTON") { if (cur !== null) toggle(cur); }
  else if (key === " " && t.classList.contains("tile")) { toggle(cur); }
  else if (key === "Escape") { selected.clear(); anchor = null; tiles.forEach((tt, k) => paint(tt, byId.get(k))); selectionText(); labels(); }
  else if ((key === "a" || key === "A") && (e.ctrlKey || e.metaKey)) { order.forEach(x => selected.add(x)); tiles.forEach((tt, k) => paint(tt, byId.get(k))); selectionText(); labels(); }
  else if (e.ctrlKey || e.metaKey || e.altKey) return;
  else if (key === "Enter" && t.tagName === "BUTTON" && !t.classList.contains("tile")) return;  // the button's own
  else if (key === "Enter" || key === "c") serial(() => decideAll(null));
  else if (key === "u") serial(undo);
  else if (key === "v") zoom();
  else if (key === "f") cycle("filter");
  else if (key === "g") cycle("reviewed");
  else if (key === "S") { if (!S.check.closed) serial(openConfirm); }
  else if (key === "?") help();
  else {
    const k = S.classes.find(x => x.key === key);
    if (!k) return;
    serial(() => decideAll(k.label));
  }
  e.preventDefault();
});

$("reviewer").textContent = CONFIG.reviewer;
$("filter").value = CONFIG.all ? "all" : "flagged";
$("filter").addEventListener("change", () => build());
$("reviewed").addEventListener("change", () => build());
$("select-mode").addEventListener("click", () => {
  const on = $("select-mode").getAttribute("aria-pressed") !== "true";
  $("select-mode").setAttribute("aria-pressed", String(on));
});
$("signoff").addEventListener("click", () => serial(openConfirm));
$("confirm-sign").addEventListener("click", sign);
$("confirm-cancel").addEventListener("click", () => $("confirm").close());
$("amend").addEventListener("click", openAmend);
$("amend-start").addEventListener("click", startAmend);
$("amend-cancel").addEventListener("click", () => $("amend-dialog").close());
$("zoom-open").addEventListener("click", zoom);
$("help-open").addEventListener("click", help);
document.querySelectorAll("dialog .close").forEach(b => b.addEventListener("click", () => b.closest("dialog").close()));
load().then(() => {
  // an UNVALIDATED session needs every cell reviewed; a session without flagged cells has
  // nothing under "flagged": both open on every cell
  if (S && $("filter").value !== "all" && (S.session.unvalidated || !order.length) && S.cells.length) {
    $("filter").value = "all"; build();
  }
});
