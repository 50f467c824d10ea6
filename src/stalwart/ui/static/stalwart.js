// Stalwart's web UI: progressive enhancement only. Every page works without this script.
(function () {
  "use strict";

  // The same wording as the server's (stalwart/ui/views.py): "40 s", "3 min", "2 h", "5 days".
  function span(seconds) {
    seconds = Math.abs(seconds);
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h";
    var days = Math.floor(seconds / 86400);
    return days === 1 ? "1 day" : days + " days";
  }

  function ago(delta) {
    if (Math.abs(delta) < 10) return "just now";
    return delta > 0 ? span(delta) + " ago" : "in " + span(delta);
  }

  function refresh() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time[data-rel]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime")) / 1000;
      if (!isNaN(at)) el.textContent = ago(now - at);
    });
    document.querySelectorAll("time[data-left]").forEach(function (el) {
      var due = Date.parse(el.getAttribute("datetime")) / 1000;
      if (isNaN(due)) return;
      var left = due - now;
      el.textContent = left >= 0 ? span(left) + " left" : "overdue by " + span(left);
      el.classList.toggle("overdue", left < 0);
    });
  }

  // Forms that change something irreversible ask first.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form instanceof HTMLFormElement ? form.getAttribute("data-confirm") : null;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // A second click on a submit button does nothing while the first is on its way.
  document.addEventListener("submit", function (event) {
    if (event.defaultPrevented) return;
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.dataset.sent) {
      event.preventDefault();
      return;
    }
    form.dataset.sent = "1";
  });

  // Coming back to a page (the back button) makes its forms usable again.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-sent]").forEach(function (form) {
      delete form.dataset.sent;
    });
  });

  setInterval(refresh, 30000);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
})();
