// Live parts of the UI, without a framework: an element with data-refresh="<url>" is replaced
// every data-every seconds (default 2) by the HTML the URL returns (the same template, rendered
// as a fragment). Pauses while the tab is hidden.
(function () {
  function refresh(el) {
    if (document.hidden) return;
    fetch(el.dataset.refresh, { headers: { "X-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var next = document.createElement("div");
        next.innerHTML = html;
        var fresh = next.firstElementChild;
        if (fresh) { el.replaceWith(fresh); start(fresh); }
      })
      .catch(function () {});
  }
  function start(el) {
    var every = parseFloat(el.dataset.every || "2") * 1000;
    setTimeout(function () { refresh(el); }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(start);
  });
})();
