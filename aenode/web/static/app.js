// Live update of the alerts table: poll the JSON API and rebuild the rows (textContent only).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var table = document.getElementById("alerts");
  if (!live || !table) { return; }
  var url = live.getAttribute("data-poll");
  function fmt(t) {
    if (!t) { return "-"; }
    var d = new Date(t * 1000), p = function (n) { return (n < 10 ? "0" : "") + n; };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" +
      p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) { var s = document.createElement("span"); s.className = cls; s.textContent = text; td.appendChild(s); }
    else { td.textContent = text; }
    tr.appendChild(td); return td;
  }
  function render(alerts) {
    var body = table.tBodies[0], rows = document.createDocumentFragment();
    alerts.forEach(function (a) {
      var tr = document.createElement("tr"), pt = a.patient || {};
      tr.className = a.acknowledged ? "acked" : "open";
      tr.setAttribute("data-study", a.study_uid);
      cell(tr, fmt(a.created));
      cell(tr, a.category, "cat cat-" + a.category);
      cell(tr, a.probability == null ? "-" : (100 * a.probability).toFixed(1) + " %");
      cell(tr, pt.patient_id || "-");
      cell(tr, pt.accession_number || "-");
      cell(tr, a.model + " r" + a.revision);
      var ack = cell(tr, "");
      if (a.acknowledged) { ack.textContent = a.acknowledged.user + ", " + fmt(a.acknowledged.at); }
      else { var b = document.createElement("strong"); b.textContent = "no"; ack.appendChild(b); }
      var link = document.createElement("a");
      link.href = "/studies/" + encodeURIComponent(a.study_uid); link.className = "open-study"; link.textContent = "Open";
      cell(tr, "").appendChild(link);
      rows.appendChild(tr);
    });
    if (!alerts.length) {
      var tr = document.createElement("tr"); tr.className = "empty";
      var td = cell(tr, "No alerts."); td.colSpan = 8; rows.appendChild(tr);
    }
    body.replaceChildren(rows);
  }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (j) { render(j.alerts); live.className = "live ok"; live.textContent = "live, updated " + fmt(Date.now() / 1000); })
      .catch(function () { live.className = "live err"; live.textContent = "not updating"; });
  }
  poll();
  setInterval(poll, 3000);
})();
