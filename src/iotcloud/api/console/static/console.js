// iotcloud console: progressive enhancement only. Every page works without this file; with it
// the device page follows the device live, the command form answers in place and a CSV import
// posts its lines in chunks to drive a progress bar.
"use strict";

(function () {
  var POLL_MS = 2000;
  var CHUNK_LINES = 200;

  function csrfToken() {
    var main = document.querySelector("main[data-csrf]");
    return main ? main.getAttribute("data-csrf") : "";
  }

  function signedOut(response) {
    if (response.status === 401) {
      window.location.assign("/console/login");
      return true;
    }
    return false;
  }

  function postJson(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body)
    });
  }

  function text(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  // -- the device page: live values, presence and frame log -------------------------------------
  function followDevice(section) {
    var url = section.getAttribute("data-state-url");
    var badge = document.getElementById("online-state");
    var updated = document.getElementById("updated-at");
    var frames = document.querySelector("#frames tbody");

    var CHART_EVERY_MS = 10000;
    var rendered = section.getAttribute("data-updated-at") || "";
    var lastCharts = Date.now();

    // new reports: redraw the charts (the server renders them) at most every CHART_EVERY_MS
    function refreshCharts() {
      var charts = document.getElementById("charts");
      if (!charts || !window.DOMParser) return;
      lastCharts = Date.now();
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("charts");
          if (fresh) charts.innerHTML = fresh.innerHTML;
        })
        .catch(function () { /* the next change tries again */ });
    }

    function apply(state) {
      if ((state.updated_at || "") !== rendered && Date.now() - lastCharts >= CHART_EVERY_MS) {
        rendered = state.updated_at || "";
        refreshCharts();
      }
      if (badge) {
        var word = state.online ? "online" : "offline";
        badge.textContent = word;
        badge.className = "badge " + word;
      }
      if (updated && state.updated_at_text) updated.textContent = state.updated_at_text;
      var cells = document.querySelectorAll("#values [data-dp]");
      for (var i = 0; i < cells.length; i++) {
        var name = cells[i].getAttribute("data-dp");
        if (Object.prototype.hasOwnProperty.call(state.values, name)) {
          var value = text(state.values[name]);
          if (cells[i].textContent !== value) cells[i].textContent = value;
        }
      }
      if (frames && state.frames) {
        while (frames.firstChild) frames.removeChild(frames.firstChild);
        state.frames.forEach(function (frame) {
          var row = document.createElement("tr");
          [frame.at_text, frame.kind, frame.payload, frame.detail].forEach(function (value, index) {
            var cell = document.createElement("td");
            if (index === 2) cell.className = "mono payload";
            cell.textContent = text(value);
            row.appendChild(cell);
          });
          frames.appendChild(row);
        });
      }
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (signedOut(response)) return null;
          return response.ok ? response.json() : null;
        })
        .then(function (state) { if (state) apply(state); })
        .catch(function () { /* the next poll tries again */ })
        .then(function () { window.setTimeout(poll, POLL_MS); });
    }
    window.setTimeout(poll, POLL_MS);
  }

  // -- the command form: answered in place -------------------------------------------------------
  function commandForm(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var result = document.getElementById("command-result");
      var errors = form.querySelectorAll("p.error");
      for (var i = 0; i < errors.length; i++) errors[i].textContent = "";
      result.textContent = "Sending…";
      fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRF-Token": csrfToken() },
        body: new FormData(form)
      })
        .then(function (response) {
          if (signedOut(response)) return null;
          return response.json();
        })
        .then(function (body) {
          if (!body) return;
          result.textContent = body.message || (body.ok ? "Command sent." : "Refused.");
          var fields = body.errors || {};
          Object.keys(fields).forEach(function (name) {
            var target = document.getElementById("error-" + name) || document.getElementById("error-form");
            if (target) target.textContent = fields[name];
          });
          if (body.error && !body.message) result.textContent = body.error;
        })
        .catch(function () { result.textContent = "The server could not be reached."; });
    });
  }

  // -- the CSV import: chunks and a progress bar -------------------------------------------------
  function importForm(form) {
    var input = form.querySelector("input[type=file][name=file]");
    var select = form.querySelector("select[name=product_key]");
    var bar = document.getElementById("import-progress");
    var result = document.getElementById("import-result");
    var fileError = document.getElementById("error-file");
    if (!window.FileReader || !input || !select || !bar || !result) return;

    function show(message, failures) {
      while (result.firstChild) result.removeChild(result.firstChild);
      var line = document.createElement("p");
      line.textContent = message;
      result.appendChild(line);
      if (failures && failures.length) {
        var list = document.createElement("ul");
        list.className = "failures";
        failures.slice(0, 200).forEach(function (failure) {
          var item = document.createElement("li");
          item.textContent = "line " + failure.line + ": " + failure.error;
          list.appendChild(item);
        });
        result.appendChild(list);
      }
    }

    form.addEventListener("submit", function (event) {
      var file = input.files && input.files[0];
      if (!file || !select.value) return; // the browser's own checks (required) apply
      event.preventDefault();
      if (fileError) fileError.textContent = "";
      var reader = new FileReader();
      reader.onerror = function () { show("The file could not be read."); };
      reader.onload = function () {
        var content = String(reader.result || "");
        if (content.indexOf("\u0000") >= 0 || content.indexOf("\uFFFD") >= 0) {
          var message = "file: " + file.name + " is not a CSV text file (UTF-8, a MAC per line)";
          if (fileError) fileError.textContent = message;
          show(message);
          return;
        }
        if (content.charCodeAt(0) === 0xfeff) content = content.slice(1);
        var lines = content.split(/\r\n|\n|\r/);
        if (lines.length && lines[lines.length - 1] === "") lines.pop();
        var total = { created: 0, existing: 0, failed: [] };
        bar.max = Math.max(1, lines.length);
        bar.value = 0;
        show("Importing " + lines.length + " line(s)…");

        function next(start) {
          if (start >= lines.length) {
            bar.value = bar.max;
            show(total.created + " created, " + total.existing + " already existed, " +
              total.failed.length + " refused.", total.failed);
            return;
          }
          var chunk = lines.slice(start, start + CHUNK_LINES);
          postJson("/console/devices/import.json", {
            product_key: select.value, lines: chunk, first_line: start + 1
          })
            .then(function (response) {
              if (signedOut(response)) return null;
              return response.json().then(function (body) { return { ok: response.ok, body: body }; });
            })
            .then(function (answer) {
              if (!answer) return;
              if (!answer.ok) {
                show(answer.body.error || "The import was refused.");
                return;
              }
              total.created += answer.body.created;
              total.existing += answer.body.existing;
              total.failed = total.failed.concat(answer.body.failed);
              bar.value = Math.min(bar.max, start + chunk.length);
              next(start + CHUNK_LINES);
            })
            .catch(function () { show("The server could not be reached; the lines before " + (start + 1) + " were imported."); });
        }
        next(0);
      };
      reader.readAsText(file);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var device = document.getElementById("device");
    if (device) followDevice(device);
    var command = document.getElementById("command");
    if (command) commandForm(command);
    var importing = document.getElementById("device-import");
    if (importing) importForm(importing);
  });
})();
