// sandboxd console: the copy button, confirmations, the phone menu and "try it" (streamed NDJSON).
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const field = document.querySelector(button.dataset.copy);
    const status = button.parentElement.querySelector(".copied");
    try {
      await navigator.clipboard.writeText(field.value);
    } catch (err) {  // no clipboard API (plain http on another host): select it for Ctrl+C
      field.select();
      document.execCommand("copy");
    }
    if (status) status.textContent = "Copied";
  });

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  const toggle = document.querySelector(".menu-toggle");
  if (toggle) {
    toggle.addEventListener("click", () => {
      const nav = document.getElementById("nav");
      const open = nav.classList.toggle("open");
      toggle.setAttribute("aria-expanded", String(open));
    });
  }

  const form = document.getElementById("try");
  if (!form) return;
  const output = document.getElementById("try-output");
  const status = document.getElementById("try-status");
  const error = document.getElementById("try-error");
  const trace = document.getElementById("try-trace");
  const run = document.getElementById("try-run");
  const note = document.getElementById("try-note");

  function append(text, stream) {
    const span = document.createElement("span");
    span.className = stream;
    span.textContent = text;
    output.appendChild(span);
    output.scrollTop = output.scrollHeight;
  }

  function handle(event) {
    if (event.type === "note") {
      note.textContent = event.message;
      note.hidden = false;
    } else if (event.type === "status") {
      status.textContent = event.status;
      trace.innerHTML = "";
      if (form.dataset.linkRuns !== "yes") { trace.textContent = "Execution " + event.trace_id; return; }
      const link = document.createElement("a");
      link.href = "executions/" + encodeURIComponent(event.trace_id);
      link.textContent = "Execution " + event.trace_id;
      link.id = "try-trace-link";
      trace.appendChild(link);
    } else if (event.type === "output") {
      append(event.data, event.stream);
    } else if (event.type === "result") {
      status.textContent = event.status + (event.result.exit_code !== undefined ? " (exit " + event.result.exit_code + ")" : "");
      status.dataset.done = event.status;
      if (event.result.error_message) append("\n" + event.result.error_message + "\n", "stderr");
    }
  }

  form.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    output.textContent = "";
    error.hidden = true;
    note.hidden = true;
    delete status.dataset.done;
    status.textContent = "starting…";
    run.disabled = true;
    const body = {
      key_id: form.key_id.value,
      language: form.language.value,
      code: form.code.value,
      timeout: parseInt(form.timeout.value, 10) || 30,
    };
    try {
      const answer = await fetch("try/run", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf(), "Accept": "application/x-ndjson" },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      if (!answer.ok) {
        const problem = await answer.json().catch(() => ({ message: answer.statusText }));
        error.textContent = problem.message || ("error " + answer.status);
        error.hidden = false;
        status.textContent = "";
        return;
      }
      const reader = answer.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (line) handle(JSON.parse(line));
        }
      }
    } catch (err) {
      error.textContent = "the connection failed: " + err;
      error.hidden = false;
    } finally {
      run.disabled = false;
    }
  });
})();
