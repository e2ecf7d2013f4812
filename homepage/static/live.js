// Live updates for the Larkspur & Co. demo pages: listen to /events and put the new
// content in place with textContent and DOM APIs only (never innerHTML), so nothing
// the server or the user id contains can become markup or script.
(function () {
  "use strict";
  var body = document.body;
  var user = body.getAttribute("data-user");
  var page = body.getAttribute("data-page");
  if (user === null || !window.EventSource) {
    return;
  }
  var ART = /^[a-z]{1,16}$/;
  var updates = 0;

  function lookup(data, path) {
    var node = data;
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i += 1) {
      if (node === null || typeof node !== "object" || !Object.prototype.hasOwnProperty.call(node, parts[i])) {
        return "";
      }
      node = node[parts[i]];
    }
    return node === null || node === undefined ? "" : node;
  }

  function setArt(use, art) {
    if (ART.test(String(art))) {
      use.setAttribute("href", "#art-" + art);
    }
  }

  function fillItem(node, item) {
    if (typeof item !== "object" || item === null) {
      var only = node.querySelector("[data-item]");
      if (only) { only.textContent = String(item); }
      return;
    }
    node.querySelectorAll("[data-item]").forEach(function (el) {
      el.textContent = String(lookup(item, el.getAttribute("data-item")));
    });
    node.querySelectorAll("use[data-art]").forEach(function (use) { setArt(use, item.art); });
  }

  function apply(data) {
    body.setAttribute("data-theme", String(lookup(data, "view.theme")));
    body.setAttribute("data-side", String(lookup(data, "badge.side")));
    document.querySelectorAll("[data-slot]").forEach(function (el) {
      el.textContent = String(lookup(data, el.getAttribute("data-slot")));
    });
    document.querySelectorAll("[data-list]").forEach(function (list) {
      var items = lookup(data, list.getAttribute("data-list"));
      var template = document.getElementById(list.getAttribute("data-template"));
      if (!Array.isArray(items) || !template) { return; }
      var fragment = document.createDocumentFragment();
      items.forEach(function (item) {
        var node = template.content.cloneNode(true);
        fillItem(node, item);
        fragment.appendChild(node);
      });
      list.replaceChildren(fragment);
    });
    var offers = lookup(data, "view.offers");
    document.querySelectorAll("use[data-hero-art]").forEach(function (use) {
      if (Array.isArray(offers) && offers.length) { setArt(use, offers[0].art); }
    });
    updates += 1;
    body.setAttribute("data-updates", String(updates));
    if (updates > 1) {  // the first event only confirms what the page already shows
      body.classList.remove("flash");
      void body.offsetWidth;
      body.classList.add("flash");
    }
  }

  var url = "/events?page=" + encodeURIComponent(page) + "&user=" + encodeURIComponent(user);
  var source = new EventSource(url);
  source.addEventListener("segments", function (event) {
    var data;
    try { data = JSON.parse(event.data); } catch (err) { return; }
    apply(data);
  });
})();
