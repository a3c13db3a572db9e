// The overview's live parts: fetched again every 2 s while the tab is visible, and swapped in
// by id. Without JavaScript the page is the same, as of when it loaded.
(function () {
  var first = document.getElementById("live-cards");
  if (!first) return;
  var url = first.getAttribute("data-refresh");
  function refresh() {
    if (document.hidden) return;
    fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("div.live").forEach(function (part) {
          var next = fresh.getElementById(part.id);
          if (next) part.innerHTML = next.innerHTML;
        });
        document.body.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function () {});
  }
  setInterval(refresh, 2000);
})();
