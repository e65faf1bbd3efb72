// Muster's dashboard: live updates, followed logs, and the API actions of its buttons and forms.
// No inline script anywhere (the Content-Security-Policy forbids it); every text that comes from
// the server is inserted as text, never as markup.
"use strict";

(() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

  function notice(text, kind) {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = text;
    box.dataset.kind = kind;
    box.hidden = false;
  }

  function setStatus(text) {
    const status = document.getElementById("live-status");
    if (status) {
      status.textContent = text;
      status.dataset.live = text;
    }
  }

  // --- live parts: the page fetched again, its [data-live] parts swapped in ---------------------

  let running = false;
  let pending = false;
  let timer = null;

  async function refresh() {
    if (running) {
      pending = true;
      return;
    }
    running = true;
    try {
      const response = await fetch(location.href, {
        headers: { "X-Muster-Live": "1", Accept: "text/html" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.status === 401 || response.redirected) {
        notice("Your session has ended: reload the page to sign in again.", "error");
        return;
      }
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of fresh.querySelectorAll("[data-live][id]")) {
        const current = document.getElementById(part.id);
        if (current && current.innerHTML !== part.innerHTML) {
          current.replaceWith(document.importNode(part, true));
        }
      }
      startLogs();
    } catch (error) {
      setStatus("offline");
    } finally {
      running = false;
      if (pending) {
        pending = false;
        schedule();
      }
    }
  }

  // At most one redraw every half second, however busy the stream: a burst of events is one
  // fetch of the page.
  function schedule() {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      refresh();
    }, 500);
  }

  // --- the event stream: resumed after a dropped connection ------------------------------------

  // The page's one EventSource, closed when the page is left: the browser may keep a left page
  // alive (its back/forward cache) and would hold the connection otherwise.
  let source = null;

  function follow(url, types) {
    let lastId = null;
    let delay = 1000;
    const connect = () => {
      const resumed = lastId ? url.replace(/after=[^&]*/, "after=" + encodeURIComponent(lastId)) : url;
      source = new EventSource(resumed);
      const current = source;
      current.onopen = () => {
        setStatus("live");
        delay = 1000;
        schedule(); // whatever happened while it was away
      };
      const seen = (event) => {
        if (event.lastEventId) lastId = event.lastEventId;
        schedule();
      };
      for (const type of types) current.addEventListener(type, seen);
      current.onerror = () => {
        if (current !== source) return; // closed on purpose
        setStatus("reconnecting");
        if (current.readyState === EventSource.CLOSED) {
          setTimeout(() => current === source && connect(), delay);
          delay = Math.min(delay * 2, 15000);
        }
      };
    };
    connect();
    return connect;
  }

  // --- logs: each open replica's log, streamed as text -----------------------------------------

  const MAX_LOG_CHARS = 2_000_000;

  // Appends as text nodes, counting as it goes: a log of many tiny chunks costs each chunk its
  // own size, not the whole log's; past the cap the oldest chunks go.
  function append(pre, text) {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(document.createTextNode(text));
    let length = Number(pre.dataset.length || 0) + text.length;
    while (length > MAX_LOG_CHARS && pre.firstChild) {
      length -= pre.firstChild.textContent.length;
      pre.firstChild.remove();
    }
    pre.dataset.length = String(length);
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  const streams = new Set(); // the AbortControllers of the logs being streamed

  async function streamLog(pre) {
    pre.dataset.streaming = "1";
    pre.textContent = "";
    pre.dataset.length = "0";
    const controller = new AbortController();
    controller.pre = pre;
    streams.add(controller);
    try {
      const response = await fetch(pre.dataset.src, {
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        pre.dataset.ended = "error";
        append(pre, "(" + (problem.detail || "HTTP " + response.status) + ")");
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        append(pre, decoder.decode(value, { stream: true }));
      }
      append(pre, decoder.decode());
      pre.dataset.ended = pre.dataset.length !== "0" ? "done" : "empty";
    } catch (error) {
      if (controller.signal.aborted) {
        pre.dataset.ended = ""; // left the page: streamed again if it comes back
      } else {
        pre.dataset.ended = "error";
        append(pre, "\n(the log stream was interrupted)");
      }
    } finally {
      streams.delete(controller);
      pre.dataset.streaming = "0";
    }
  }

  function startLogs() {
    for (const pre of document.querySelectorAll("details[open] pre.log[data-src]")) {
      const ended = pre.dataset.ended;
      if (pre.dataset.streaming === "1" || ended === "done") continue;
      streamLog(pre);
    }
  }

  // One replica's log followed at a time (the boxes are an exclusive group): a browser has six
  // connections to the gateway, and the page's event stream holds one already.
  document.addEventListener(
    "toggle",
    (event) => {
      if (!event.target.matches?.("details.log-box")) return;
      if (event.target.open) {
        startLogs();
      } else {
        const pre = event.target.querySelector("pre.log");
        for (const controller of streams) if (controller.pre === pre) controller.abort();
      }
    },
    true,
  );

  // --- actions: the API's own requests, with the session's CSRF token ---------------------------

  function ask(question) {
    const dialog = document.getElementById("confirm");
    if (!question || !dialog?.showModal) return Promise.resolve(true);
    document.getElementById("confirm-text").textContent = question;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      document.getElementById("confirm-no").focus();
    });
  }

  async function act(method, path, body, question) {
    if (!(await ask(question))) return;
    const headers = { "X-CSRF-Token": csrf(), Accept: "application/json" };
    if (body !== null) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        credentials: "same-origin",
        body: body === null ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      notice("The gateway could not be reached; nothing was changed.", "error");
      return;
    }
    if (response.ok) {
      notice("Done.", "ok");
      refresh();
      return;
    }
    const problem = await response.json().catch(() => ({}));
    const fields = (problem.errors || []).map((e) => `${e.pointer || ""} ${e.detail || ""}`.trim());
    notice([problem.detail || problem.title || "HTTP " + response.status, ...fields].join("; "), "error");
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest?.("button[data-api-path]");
    if (!button) return;
    event.preventDefault();
    act(button.dataset.apiMethod, button.dataset.apiPath, null, button.dataset.confirm);
  });

  document.addEventListener("submit", (event) => {
    const form = event.target.closest?.("form[data-api-path]");
    if (!form) return;
    event.preventDefault();
    const body = {};
    for (const input of form.querySelectorAll("input[name]")) {
      let value = input.value.trim();
      if (value === "") continue;
      if (input.dataset.json === "number") {
        value = Number(value);
        if (!Number.isFinite(value)) {
          notice(`${input.name} must be a number`, "error");
          input.focus();
          return;
        }
      }
      const path = input.name.split(".");
      let into = body;
      for (const key of path.slice(0, -1)) into = into[key] ??= {};
      into[path[path.length - 1]] = value;
    }
    act(form.dataset.apiMethod, form.dataset.apiPath, body, form.dataset.confirm);
  });

  // --- start ------------------------------------------------------------------------------------

  const events = document.body.dataset.events;
  const reconnect = events
    ? follow(events, (document.body.dataset.eventTypes || "").split(" ").filter(Boolean))
    : null;
  startLogs();

  // Leaving the page closes its connections; coming back to it (the back/forward cache) opens
  // them again and catches up.
  window.addEventListener("pagehide", () => {
    setStatus("");
    if (source !== null) {
      const closing = source;
      source = null;
      closing.close();
    }
    for (const controller of streams) controller.abort();
  });
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    if (reconnect !== null) reconnect();
    startLogs();
    schedule();
  });
})();
