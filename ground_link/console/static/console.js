// The operator console page: a snapshot of what this login may see, then live updates by
// server-sent events (/api/stream). Everything is served by the console itself: Leaflet and the
// Natural Earth base map are vendored under /static/vendor, nothing comes from the internet.
// Products are keyed by `key` ("satellite:product") and frames by `frame_key` ("satellite:frame"):
// in a constellation's archive (several satellites, issue #18) product and frame ids repeat.
"use strict";

const SEV_COLOUR = {critical: "#d7191c", warning: "#f28e2b", info: "#2c7bb6"};
const CLASS_COLOUR = {fire: "#b2182b", ship: "#2166ac"};
const MAX_ROWS = 300;

const S = {
  me: null, sensor: null,
  alerts: new Map(), detections: new Map(), frames: new Map(), chips: new Map(),
  chipsByDetection: new Map(), quicklookByFrame: new Map(), events: [],
  markers: new Map(), openAlert: null, feed: null, constellation: null,
};
window.consoleState = S;  // read by the browser tests

// --- formatting ---------------------------------------------------------------------------------
const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const utc = (iso) => iso ? iso.replace("T", " ").replace(/(\.\d+)?Z$/, " UTC") : "-";
const hms = (iso) => iso ? iso.slice(11, 19) : "-";
function latlon(lat, lon, digits = 5) {
  if (lat == null || lon == null) return "position unknown";
  return `${Math.abs(lat).toFixed(digits)}°${lat < 0 ? "S" : "N"} ${Math.abs(lon).toFixed(digits)}°${lon < 0 ? "W" : "E"}`;
}

// --- the map --------------------------------------------------------------------------------------
const map = L.map("map", {worldCopyJump: true, zoomSnap: 0.5, minZoom: 2, maxZoom: 14}).setView([-30, 60], 4);
// A popup taller than the map (chip + quicklook in a short map: small window, a constellation's
// taller side panel) would be clipped at its top: its content scrolls inside the map's height instead.
function fitPopupsToMap() {
  document.documentElement.style.setProperty("--map-h", `${document.getElementById("map").clientHeight}px`);
}
fitPopupsToMap();
window.addEventListener("resize", fitPopupsToMap);
new ResizeObserver(fitPopupsToMap).observe(document.getElementById("map"));
map.attributionControl.setPrefix(false);
map.attributionControl.addAttribution("Natural Earth (world-atlas), Leaflet");
map.createPane("base").style.zIndex = 200;
const alertLayer = L.layerGroup().addTo(map);
const detLayer = L.layerGroup().addTo(map);
const frameLayer = L.layerGroup().addTo(map);
const ruleLayer = L.layerGroup().addTo(map);

async function loadBaseMap() {
  const world = await (await fetch("/static/vendor/countries-50m.json")).json();
  const land = topojson.feature(world, world.objects.land);
  const borders = topojson.mesh(world, world.objects.countries, (a, b) => a !== b);
  const opts = {pane: "base", interactive: false};
  L.geoJSON(land, {...opts, style: {stroke: true, color: "#8a8f7a", weight: 0.7, fillColor: "#ece8d9", fillOpacity: 1}}).addTo(map);
  L.geoJSON(borders, {...opts, style: {color: "#a89f91", weight: 0.6, dashArray: "3 2", fill: false}}).addTo(map);
  const lines = [];
  for (let lat = -80; lat <= 80; lat += 10) lines.push([[lat, -180], [lat, 180]]);
  for (let lon = -180; lon <= 180; lon += 10) lines.push([[-85, lon], [85, lon]]);
  L.polyline(lines, {...opts, color: "#ffffff", weight: 0.5, opacity: 0.6}).addTo(map);
  document.getElementById("map").classList.add("basemap-ready");
}

// --- filters ----------------------------------------------------------------------------------------
function filters() {
  const checked = (cls) => [...document.querySelectorAll(cls)].filter((e) => e.checked).map((e) => e.value);
  const region = document.getElementById("f-region").value.split(",").map(Number);
  const t = (id) => { const v = document.getElementById(id).value; return v ? Date.parse(v + "Z") : null; };
  return {classes: checked(".f-class"), severities: checked(".f-sev"), since: t("f-since"), until: t("f-until"),
          region: region.length === 4 && region.every(Number.isFinite) ? region : null,
          dets: document.getElementById("f-dets").checked, frames: document.getElementById("f-frames").checked};
}
function inRegion(r, lat, lon) {
  if (lat == null || lon == null) return false;
  const [lat0, lon0, lat1, lon1] = r;
  if (lat < lat0 || lat > lat1) return false;
  return lon0 <= lon1 ? lon >= lon0 && lon <= lon1 : lon >= lon0 || lon <= lon1;
}
function passes(rec, f, sevCheck) {
  if (rec.class && !f.classes.includes(rec.class)) return false;
  if (sevCheck && !f.severities.includes(rec.severity)) return false;
  const t = rec.capture_utc ? Date.parse(rec.capture_utc) : null;
  if (f.since != null && (t == null || t < f.since)) return false;
  if (f.until != null && (t == null || t > f.until)) return false;
  if (f.region && !inRegion(f.region, rec.lat, rec.lon)) return false;
  return true;
}
function exportQuery(f) {
  const q = new URLSearchParams();
  q.set("class", f.classes.join(","));
  q.set("severity", f.severities.join(","));
  if (f.since != null) q.set("since", new Date(f.since).toISOString());
  if (f.until != null) q.set("until", new Date(f.until).toISOString());
  if (f.region) q.set("region", f.region.join(","));
  return q.toString();
}

// which satellite and which station (a constellation's run only)
const viaRows = (r) => r.station ? `<tr><th>satellite</th><td>${esc(r.satellite_id)}</td></tr>` +
  `<tr><th>via station</th><td>${esc(r.station)}</td></tr>` : "";

// --- popups -------------------------------------------------------------------------------------------
function chipHtml(detKey, frameKey) {
  const chip = S.chips.get(S.chipsByDetection.get(detKey));
  const ql = S.chips.get(S.quicklookByFrame.get(frameKey));
  let html = "";
  if (chip) html += `<figure><img class="chip-img" data-chip-id="${esc(chip.key)}" src="${chip.url}" alt="image chip">` +
    `<figcaption>chip ${chip.width_px}×${chip.height_px} px · <a href="${chip.url}" download>PNG</a></figcaption></figure>`;
  else html += `<div class="muted small no-chip">no image chip downlinked for this detection</div>`;
  if (ql) html += `<figure><img class="quicklook-img" src="${ql.url}" alt="frame quicklook">` +
    `<figcaption>frame quicklook · <a href="${ql.url}" download>PNG</a></figcaption></figure>`;
  return html;
}
function alertPopup(a) {
  return `<div class="popup" data-alert-id="${a.id}"><div class="ptitle sev-${esc(a.severity)}">${esc(a.severity).toUpperCase()} ` +
    `${esc(a.class)}</div><table class="small"><tr><th>confidence</th><td>${(a.confidence * 100).toFixed(0)} %</td></tr>` +
    `<tr><th>captured</th><td>${utc(a.capture_utc)}</td></tr><tr><th>received</th><td>${utc(a.received_utc)}</td></tr>` +
    `<tr><th>position</th><td>${latlon(a.lat, a.lon)}</td></tr><tr><th>frame</th><td>${a.frame_id}</td></tr>` +
    `<tr><th>product</th><td>${esc(a.product)}</td></tr>${viaRows(a)}<tr><th>area</th><td>${a.area_px} px</td></tr></table>` +
    chipHtml(a.key, a.frame_key) + `<div class="small"><a href="/api/cap/${a.id}.xml">CAP 1.2</a></div></div>`;
}
function detectionPopup(d) {
  return `<div class="popup"><div class="ptitle">detection: ${esc(d.class)}</div><table class="small">` +
    `<tr><th>confidence</th><td>${(d.confidence * 100).toFixed(0)} %</td></tr><tr><th>captured</th><td>${utc(d.capture_utc)}</td></tr>` +
    `<tr><th>position</th><td>${latlon(d.lat, d.lon)}</td></tr><tr><th>frame</th><td>${d.frame_id}</td></tr>` +
    `<tr><th>product</th><td>${esc(d.product)}</td></tr>${viaRows(d)}</table>${chipHtml(d.key, d.frame_key)}</div>`;
}
function framePopup(fr) {
  const ql = S.chips.get(S.quicklookByFrame.get(fr.frame_key));
  const counts = [fr.fires != null ? `${fr.fires} fires` : null, fr.ships != null ? `${fr.ships} ships` : null].filter(Boolean);
  return `<div class="popup"><div class="ptitle">frame ${fr.frame_id}</div><table class="small">` +
    `<tr><th>captured</th><td>${utc(fr.capture_utc)}</td></tr><tr><th>cloud</th><td>${(fr.cloud_fraction * 100).toFixed(1)} %` +
    `${fr.discarded ? " (discarded)" : ""}</td></tr><tr><th>found</th><td>${counts.join(", ") || "-"}</td></tr>` +
    `<tr><th>centre</th><td>${latlon(fr.lat, fr.lon)}</td></tr>${viaRows(fr)}</table>` +
    (ql ? `<figure><img class="quicklook-img" src="${ql.url}" alt="quicklook"></figure>` : "") + `</div>`;
}

// --- drawing --------------------------------------------------------------------------------------------
function drawAlert(a, f) {
  if (a.lat == null || !passes(a, f, true)) return;
  const m = L.circleMarker([a.lat, a.lon], {
    radius: a.severity === "critical" ? 8 : 6, color: "#222", weight: 1, fillColor: SEV_COLOUR[a.severity] || "#666",
    fillOpacity: 0.9, className: `alert-marker sev-${a.severity} cls-${a.class} alert-${a.id}`,
  }).bindPopup(() => alertPopup(a), {maxWidth: 320, minWidth: 220});
  m.on("popupopen", () => { S.openAlert = a.id; });
  m.on("popupclose", () => { if (S.openAlert === a.id) S.openAlert = null; });
  m.addTo(alertLayer);
  const el = m.getElement();
  if (el) { el.setAttribute("data-alert-id", a.id); el.setAttribute("data-class", a.class); }
  S.markers.set(a.id, m);
}
function drawDetection(d, f, alerted) {
  if (!f.dets || d.lat == null || alerted.has(d.key) || !passes(d, f, false)) return;
  L.circleMarker([d.lat, d.lon], {radius: 3.5, color: CLASS_COLOUR[d.class] || "#555", weight: 1, fillOpacity: 0.4,
    className: `det-marker cls-${d.class}`}).bindPopup(() => detectionPopup(d), {maxWidth: 320}).addTo(detLayer);
}
function drawFrame(fr, f) {
  if (!f.frames || fr.lat == null || !passes(fr, f, false)) return;
  const s = S.sensor;
  const halfLat = s ? s.height_px * s.gsd_m / 2 / 111320 : 0.05;
  const halfLon = s ? s.width_px * s.gsd_m / 2 / (111320 * Math.max(Math.cos(fr.lat * Math.PI / 180), 0.05)) : 0.05;
  L.rectangle([[fr.lat - halfLat, fr.lon - halfLon], [fr.lat + halfLat, fr.lon + halfLon]], {
    color: "#555", weight: 1, dashArray: "4 3", fillColor: "#fff", fillOpacity: 0.15 + 0.6 * fr.cloud_fraction,
    className: "frame-box"}).bindPopup(() => framePopup(fr), {maxWidth: 320}).addTo(frameLayer);
}
function redraw() {
  const f = filters();
  alertLayer.clearLayers(); detLayer.clearLayers(); frameLayer.clearLayers(); S.markers.clear();
  for (const fr of S.frames.values()) drawFrame(fr, f);
  const alerted = new Set([...S.alerts.values()].map((a) => a.key));
  for (const d of S.detections.values()) drawDetection(d, f, alerted);
  for (const a of S.alerts.values()) drawAlert(a, f);
  renderAlertTable(f);
  for (const k of ["geojson", "kml", "csv", "cap"]) document.getElementById(`x-${k}`).href = `/api/export/alerts.${k}?${exportQuery(f)}`;
}
function renderAlertTable(f) {
  const rows = [...S.alerts.values()].filter((a) => passes(a, f, true)).sort((x, y) => y.id - x.id);
  document.getElementById("alert-count").textContent = `${rows.length} shown of ${S.alerts.size}`;
  document.querySelector("#alert-table tbody").innerHTML = rows.slice(0, MAX_ROWS).map((a) =>
    `<tr class="alert-row sev-${esc(a.severity)}" data-alert-id="${a.id}"><td>${hms(a.capture_utc)}</td>` +
    `<td><span class="dot" style="background:${SEV_COLOUR[a.severity] || "#666"}"></span>${esc(a.severity)}</td>` +
    `<td>${esc(a.class)}</td><td>${a.confidence.toFixed(2)}</td><td class="pos">${latlon(a.lat, a.lon, S.constellation ? 2 : 3)}</td>` +
    (S.constellation ? `<td class="via">${esc(a.satellite_id)} · ${esc(a.station)}</td>` : "") + `</tr>`).join("");
}
function openAlert(id) {
  const m = S.markers.get(id);
  if (!m) return;
  map.setView(m.getLatLng(), Math.max(map.getZoom(), 9), {animate: false});
  m.openPopup();
}
document.querySelector("#alert-table tbody").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr[data-alert-id]");
  if (tr) openAlert(Number(tr.dataset.alertId));
});

// --- records in ---------------------------------------------------------------------------------------
function addChip(c) {
  S.chips.set(c.key, c);
  if (c.kind === "quicklook") S.quicklookByFrame.set(c.frame_key, c.key);
  else if (c.detection_key != null) S.chipsByDetection.set(c.detection_key, c.key);
}
function addAlert(a, via) {
  if (S.alerts.has(a.id)) return false;
  a.via = via; a.seen_ms = Date.now();
  S.alerts.set(a.id, a);
  return true;
}
function refreshOpenPopup() {
  if (S.openAlert == null) return;
  const m = S.markers.get(S.openAlert), a = S.alerts.get(S.openAlert);
  if (m && a && m.isPopupOpen()) m.setPopupContent(alertPopup(a));
}

// --- panels ---------------------------------------------------------------------------------------------
function renderConstellationLink(l) {
  // each satellite's link, the next pass of each (satellite, station) pair, each station's archive
  const el = document.getElementById("link-state");
  const up = l.satellites.filter((s) => s.link_up);
  el.textContent = !l.run_active ? "run ended: showing the archive" : `${up.length} of ${l.satellites.length} satellites in contact`;
  el.className = !l.run_active ? "state-idle" : up.length ? "state-up" : "state-down";
  const satRow = (s) => {
    let state = "-";
    if (s.link_up) state = `AOS via ${s.stations_in_view.join(", ")}` + (s.los_utc ? `, LOS ${hms(s.los_utc)}` : "");
    else if (s.link_up === false) state = s.next_aos_utc ? `LOS: next AOS ${esc(s.next_station)} ${hms(s.next_aos_utc)}` : "LOS";
    const q = s.queue ? `${s.queue.products} (${hms(s.queue.time_utc)})` : "-";
    return `<tr class="sat-row" data-satellite="${s.satellite_id}"><td>sat ${s.satellite_id}</td>` +
      `<td class="${s.link_up ? "state-up" : ""}">${esc(state)}</td><td class="num">${esc(q)}</td></tr>`;
  };
  let html = `<tr><th>satellite</th><th>link</th><th>onboard queue</th></tr>` + l.satellites.map(satRow).join("");
  html += (l.passes || []).length ? `<tr><th>next pass</th><th>AOS (UTC)</th><th>LOS</th></tr>` + l.passes.map((p) =>
    `<tr class="pass-row"><td>sat ${p.satellite_id} · ${esc(p.station)}</td><td>${p.in_progress ? "in pass" : hms(p.aos_utc)}</td>` +
    `<td>${hms(p.los_utc)}</td></tr>`).join("") : `<tr><td colspan="3" class="muted">no pass within the scenario's horizon</td></tr>`;
  if (l.stations) html += `<tr><th>station</th><th>archived</th><th>capture→archive p50/p99/max</th></tr>` +
    l.stations.map((st) => `<tr class="station-row" data-station="${esc(st.station)}"><td>${esc(st.station)}` +
      `${st.running ? "" : ` <span class="muted">(not running)</span>`}</td><td>${st.products_archived} (` +
      Object.entries(st.by_satellite).map(([k, n]) => `sat ${esc(k)} ${n}`).join(", ") + `)</td>` +
      `<td class="num">${[st.latency_s_p50, st.latency_s_p99, st.latency_s_max].map((v) => v == null ? "-" : `${Math.round(v)} s`).join(" / ")}</td></tr>`).join("");
  document.getElementById("passes").innerHTML = html;
  document.getElementById("queue").textContent = "";
}
function renderLink(l) {
  S.link = l;
  document.getElementById("clock").textContent = l.scenario_utc ? `mission time ${utc(l.scenario_utc)}` : "";
  if (l.satellites) { renderConstellationLink(l); return; }
  const el = document.getElementById("link-state");
  let text, cls;
  if (!l.run_active) { text = "run ended: showing the archive"; cls = "state-idle"; }
  else if (l.link_up) { text = `AOS via ${l.station}` + (l.los_utc ? `, LOS at ${hms(l.los_utc)} UTC` : " (link always up)"); cls = "state-up"; }
  else { text = "LOS" + (l.next_aos_utc ? `: next AOS ${l.next_station} at ${hms(l.next_aos_utc)} UTC` : ", no contact planned"); cls = "state-down"; }
  el.textContent = text;
  el.className = cls;
  document.getElementById("passes").innerHTML = (l.passes || []).length ?
    `<tr><th>station</th><th>next pass AOS</th><th>LOS</th></tr>` + l.passes.map((p) =>
      `<tr><td>${esc(p.station)}</td><td>${p.in_progress ? "in pass" : utc(p.aos_utc)}</td><td>${hms(p.los_utc)}</td></tr>`).join("") +
      (l.contacts === "always" ? `<tr><td colspan="3" class="muted">orbit passes; the link model is always up</td></tr>` : "")
    : `<tr><td class="muted">no pass within the scenario's horizon</td></tr>`;
  document.getElementById("queue").textContent = l.queue ?
    `onboard queue: ${l.queue.products} products (as reported ${utc(l.queue.time_utc)})` : "";
}
function renderHousekeeping(hk) {
  const panel = document.getElementById("hk-panel");
  if (hk == null) { panel.classList.add("hidden"); return; }
  panel.classList.remove("hidden");
  const latest = hk.reduce((t, c) => (c.time_utc && c.time_utc > t ? c.time_utc : t), "");
  document.getElementById("hk-time").textContent = latest ? `as of ${utc(latest)}` : "(none yet)";
  const order = {alarm: 0, warn: 1, ok: 2};
  const rows = [...hk].sort((a, b) => order[a.state] - order[b.state] || a.id - b.id);
  const sat = (c) => S.constellation ? `<td>${esc(c.satellite_id)}</td>` : "";  // every satellite's channels
  document.getElementById("hk-table").innerHTML = `<tr><th></th>${S.constellation ? "<th>sat</th>" : ""}<th>channel</th><th>value</th><th>unit</th></tr>` +
    rows.map((c) => `<tr class="hk-${c.state}" title="${esc(c.description)}"><td><span class="dot hk-dot-${c.state}"></span></td>` +
      `${sat(c)}<td>${esc(c.name)}</td><td class="num">${esc(c.text)}</td><td>${esc(c.unit)}</td></tr>`).join("");
}
function renderEvents() {
  const panel = document.getElementById("events-panel");
  if (!(S.me && S.me.housekeeping)) { panel.classList.add("hidden"); return; }
  document.getElementById("event-table").innerHTML = S.events.slice(-100).reverse().map((e) =>
    `<tr class="ev-${esc(e.severity).toLowerCase()}"><td>${hms(e.time_utc)}</td>${S.constellation ? `<td>sat ${esc(e.satellite_id)}</td>` : ""}` +
    `<td>${esc(e.name)}</td><td>${esc(e.message)}</td></tr>`).join("");
}
function renderCloud() {
  const svg = document.getElementById("cloud-chart");
  const frames = [...S.frames.values()].filter((f) => f.capture_utc).sort((a, b) => a.capture_time_s - b.capture_time_s);
  const W = 600, H = 160, L0 = 40, R0 = 10, T0 = 10, B0 = 24;
  if (!frames.length) { svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" text-anchor="middle" class="axis">no frames yet</text>`; return; }
  const t0 = Date.parse(frames[0].capture_utc), t1 = Math.max(Date.parse(frames[frames.length - 1].capture_utc), t0 + 1000);
  const x = (t) => L0 + (W - L0 - R0) * (t - t0) / (t1 - t0), y = (v) => T0 + (H - T0 - B0) * (1 - v);
  let g = "";
  for (const v of [0, 0.25, 0.5, 0.75, 1]) g += `<line x1="${L0}" x2="${W - R0}" y1="${y(v)}" y2="${y(v)}" class="grid"/>` +
    `<text x="${L0 - 4}" y="${y(v) + 4}" text-anchor="end" class="axis">${v * 100}%</text>`;
  for (let i = 0; i <= 4; i++) { const t = t0 + (t1 - t0) * i / 4;
    g += `<text x="${x(t)}" y="${H - 6}" text-anchor="middle" class="axis">${new Date(t).toISOString().slice(11, 19)}</text>`; }
  const bySat = new Map();  // one line per satellite (a constellation's frames interleave in time)
  for (const f of frames) { const k = f.satellite_id || 1; if (!bySat.has(k)) bySat.set(k, []); bySat.get(k).push(f); }
  for (const [k, fs] of bySat) {
    const pts = fs.map((f) => `${x(Date.parse(f.capture_utc)).toFixed(1)},${y(f.cloud_fraction).toFixed(1)}`);
    g += `<polyline points="${pts.join(" ")}" class="cloud-line sat-${esc(k)}"/>`;
  }
  g += frames.map((f) => `<circle cx="${x(Date.parse(f.capture_utc)).toFixed(1)}" cy="${y(f.cloud_fraction).toFixed(1)}" r="3" ` +
    `class="cloud-pt${f.discarded ? " discarded" : ""}"><title>${f.station ? `sat ${esc(f.satellite_id)} ` : ""}frame ${f.frame_id}: ${(f.cloud_fraction * 100).toFixed(1)} %` +
    `${f.discarded ? " (discarded)" : ""}</title></circle>`).join("");
  svg.innerHTML = g;
}
function drawRule(me) {
  ruleLayer.clearLayers();
  document.getElementById("rule").textContent = `Access: ${me.rule}`;
  for (const [lat0, lon0, lat1, lon1] of me.regions) {
    L.rectangle([[lat0, lon0], [lat1, lon1 < lon0 ? lon1 + 360 : lon1]], {color: "#6a3d9a", weight: 1.5, dashArray: "6 4",
      fill: false, interactive: false, className: "rule-box"}).addTo(ruleLayer);
  }
}

// --- start -----------------------------------------------------------------------------------------------
function setFeedState(text, cls) {
  const el = document.getElementById("feed-state");
  el.textContent = text;
  el.className = `pill ${cls}`;
}
async function start() {
  loadBaseMap().catch((e) => console.error("base map", e));
  const r = await fetch("/api/snapshot", {credentials: "same-origin"});
  if (r.status === 401) { window.location.assign("/login"); return; }
  const snap = await r.json();
  S.me = snap.me; S.sensor = snap.sensor; S.constellation = snap.constellation || null;
  document.body.classList.toggle("constellation", !!S.constellation);
  document.getElementById("who").textContent = `${snap.me.title} (${snap.me.name})`;
  drawRule(snap.me);
  for (const c of snap.chips) addChip(c);
  for (const d of snap.detections) S.detections.set(d.key, d);
  for (const fr of snap.frames) S.frames.set(fr.frame_key, fr);
  for (const a of snap.alerts) addAlert(a, "snapshot");
  S.events = snap.events || [];
  renderHousekeeping(snap.housekeeping);
  renderEvents();
  renderCloud();
  redraw();
  const located = [...S.alerts.values(), ...S.frames.values()].filter((x) => x.lat != null);
  // Not animated: a zoom animation still running when the operator clicks an alert would, at its
  // end, undo that alert's setView and leave its popup clipped (seen in the browser test under load).
  if (located.length) map.fitBounds(L.latLngBounds(located.map((x) => [x.lat, x.lon])).pad(0.8), {maxZoom: 6, animate: false});
  else if (snap.me.regions.length) map.fitBounds(ruleLayer.getLayers()[0].getBounds(), {animate: false});
  connect(snap.cursor);
}
function connect(cursor) {
  const es = new EventSource(`/api/stream?cursor=${encodeURIComponent(cursor)}`);
  S.feed = es;
  let pending = false;
  const later = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; renderCloud(); renderEvents(); }); } };
  es.onopen = () => setFeedState("feed live", "pill-live");
  es.onerror = () => setFeedState("reconnecting", "pill-wait");
  es.addEventListener("alert", (ev) => {
    const a = JSON.parse(ev.data);
    if (!addAlert(a, "feed")) return;
    drawAlert(a, filters());
    renderAlertTable(filters());
  });
  es.addEventListener("detection", (ev) => {
    const d = JSON.parse(ev.data);
    if (S.detections.has(d.key)) return;
    S.detections.set(d.key, d);
    const alerted = new Set([...S.alerts.values()].map((a) => a.key));
    drawDetection(d, filters(), alerted);
  });
  es.addEventListener("frame", (ev) => {
    const fr = JSON.parse(ev.data);
    const had = S.frames.has(fr.frame_key);
    S.frames.set(fr.frame_key, fr);
    if (!had) drawFrame(fr, filters());
    later();
  });
  for (const kind of ["chip", "quicklook"]) es.addEventListener(kind, (ev) => { addChip(JSON.parse(ev.data)); refreshOpenPopup(); });
  es.addEventListener("event", (ev) => {
    const e = JSON.parse(ev.data);
    if (S.events.some((x) => x.key === e.key)) return;
    S.events.push(e);
    later();
  });
  es.addEventListener("housekeeping", (ev) => renderHousekeeping(JSON.parse(ev.data).channels));
  es.addEventListener("link", (ev) => renderLink(JSON.parse(ev.data)));
  es.addEventListener("logout", () => { es.close(); window.location.assign("/login"); });
}

for (const el of document.querySelectorAll("#filters input")) el.addEventListener("change", redraw);
document.getElementById("f-region").addEventListener("keyup", (ev) => { if (ev.key === "Enter") redraw(); });
document.getElementById("f-view").addEventListener("click", () => {
  // The map scrolls past +-180 degrees (worldCopyJump): a region is in -90..90 / -180..180, as the
  // server requires; west > east then means "across 180 degrees".
  const b = map.getBounds();
  const wrap = (lon) => ((lon + 180) % 360 + 360) % 360 - 180;
  const whole = b.getEast() - b.getWest() >= 360;
  const region = [Math.max(-90, b.getSouth()), whole ? -180 : wrap(b.getWest()),
                  Math.min(90, b.getNorth()), whole ? 180 : wrap(b.getEast())];
  document.getElementById("f-region").value = region.map((v) => v.toFixed(3)).join(",");
  redraw();
});
document.getElementById("f-clear").addEventListener("click", () => { document.getElementById("f-region").value = ""; redraw(); });
document.getElementById("logout").addEventListener("click", async () => {
  if (S.feed) S.feed.close();
  await fetch("/api/logout", {method: "POST", credentials: "same-origin"});
  window.location.assign("/login");
});
start();
