// The web chat page: everything the /llmchat API allows, with no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  userId: sessionStorage.getItem("llmchat-user") || `web-${crypto.randomUUID().slice(0, 8)}`,
  apiKey: "",
  servers: [],
  chosen: null, // the catalogue server picked, or null for the hand-entered URL
  connected: false,
  busy: false,
};
sessionStorage.setItem("llmchat-user", state.userId);

// ---- talking to the shim -------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.apiKey) h.Authorization = `Bearer ${state.apiKey}`;
  return h;
}

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  } catch (err) {
    throw new Error(`the service cannot be reached (${err.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

async function failure(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    const said = typeof body.detail === "string" ? body.detail : body.error && body.error.message;
    if (said) message = `${said} (HTTP ${response.status})`;
  } catch (_) { /* not JSON: keep the status */ }
  return new Error(message);
}

// Server-sent events from a POST: fetch's body stream, split into frames.
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// ---- the conversation ----------------------------------------------------------

function addMessage(role, text, extraClass) {
  const item = document.createElement("li");
  item.className = `msg ${role}${extraClass ? ` ${extraClass}` : ""}`;
  item.dataset.role = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = { user: "You", assistant: "Assistant", system: "Notice" }[role];
  item.append(who);
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text || "";
  item.append(body);
  if (role === "system" && extraClass === "error") item.setAttribute("role", "alert");
  $("log").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

const notice = (text) => addMessage("system", text);
const problem = (text) => addMessage("system", text, "error");

// An answer being streamed: plain text, with <think>...</think> in collapsible sections.
class Answer {
  constructor() {
    this.item = addMessage("assistant", "");
    this.body = this.item.querySelector(".body");
    this.body.classList.add("typing");
    this.item.setAttribute("aria-busy", "true");
    this.raw = "";
    this.text = "";
  }

  token(text) {
    this.raw += text;
    this.render();
  }

  render() {
    // Text outside think tags is the answer; inside, the model's reasoning.
    const parts = this.raw.split(/(<think>|<\/think>)/);
    let thinking = false;
    const nodes = [];
    for (const part of parts) {
      if (part === "<think>") { thinking = true; continue; }
      if (part === "</think>") { thinking = false; continue; }
      if (!part) continue;
      if (thinking) {
        const box = document.createElement("details");
        box.className = "thinking";
        const summary = document.createElement("summary");
        summary.textContent = "Thinking";
        box.append(summary, document.createTextNode(part));
        nodes.push(box);
      } else {
        nodes.push(document.createTextNode(part));
      }
    }
    const tools = [...this.body.querySelectorAll(":scope > .tool")];
    this.body.replaceChildren(...tools, ...nodes);
    this.item.scrollIntoView({ block: "end" });
  }

  toolStart(event) {
    const box = document.createElement("details");
    box.className = "tool running";
    box.dataset.id = event.id;
    const summary = document.createElement("summary");
    summary.textContent = `Tool ${event.tool}: running`;
    const args = document.createElement("pre");
    args.textContent = `input: ${JSON.stringify(event.input, null, 1)}`;
    box.append(summary, args);
    const tools = this.body.querySelectorAll(":scope > .tool");
    if (tools.length) tools[tools.length - 1].after(box); else this.body.prepend(box);
  }

  toolEnd(event, failed) {
    let box = this.body.querySelector(`:scope > .tool[data-id="${CSS.escape(event.id)}"]`);
    if (!box) { this.toolStart(event); box = this.body.querySelector(`:scope > .tool[data-id="${CSS.escape(event.id)}"]`); }
    box.className = `tool ${failed ? "failed" : "done"}`;
    box.querySelector("summary").textContent =
      `Tool ${event.tool}: ${failed ? "failed" : "done"} (${Math.round(event.elapsed_ms)} ms)`;
    const out = document.createElement("pre");
    out.className = "result";
    out.textContent = `${failed ? "error" : "result"}: ${failed ? event.error : event.output}`;
    box.append(out);
  }

  finish(final) {
    if (final && final.content && !this.raw.trim()) this.raw = final.content;
    this.render();
    this.body.classList.remove("typing");
    this.item.removeAttribute("aria-busy");
  }
}

async function send(text) {
  addMessage("user", text);
  const answer = new Answer();
  setBusy(true);
  try {
    const response = await call("POST", "/llmchat/chat", { user_id: state.userId, message: text, streaming: true });
    let ended = false;
    for await (const { event, data } of sseEvents(response)) {
      if (event === "token") answer.token(data.content);
      else if (event === "tool_start") answer.toolStart(data);
      else if (event === "tool_end") answer.toolEnd(data, false);
      else if (event === "tool_error") answer.toolEnd(data, true);
      else if (event === "final") { answer.finish(data); ended = true; }
      else if (event === "error") {
        answer.finish(null);
        problem(`The turn failed: ${data.error}${data.recoverable ? " (trying again may help)" : ""}`);
        ended = true;
      }
    }
    if (!ended) { answer.finish(null); problem("The answer stopped before it finished."); }
  } catch (err) {
    answer.finish(null);
    if (!answer.raw) answer.item.remove();
    problem(`The message was not answered: ${err.message}`);
  } finally {
    setBusy(false);
  }
}

// ---- set-up: servers, models, connect ------------------------------------------

function badge(text, kind) {
  const b = document.createElement("span");
  b.className = `badge badge-${kind}`;
  b.textContent = text;
  return b;
}

function renderServers() {
  const list = $("servers");
  list.replaceChildren();
  for (const server of state.servers) {
    const item = document.createElement("li");
    item.dataset.name = server.name;
    if (state.chosen === server) item.classList.add("chosen");
    const label = document.createElement("label");
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "server";
    radio.value = server.name;
    radio.checked = state.chosen === server;
    radio.addEventListener("change", () => choose(server));
    const text = document.createElement("span");
    const name = document.createElement("strong");
    name.textContent = server.name;
    const status = {
      active: badge(`${server.tool_count} tools`, "on"),
      needs_token: badge("answers; needs a token", "token"),
      unreachable: badge("unreachable", "bad"),
    }[server.status];
    if (server.tools.length) status.title = server.tools.join(", ");
    if (server.error) status.title = server.error;
    text.append(name, " ", status);
    if (server.requires_token) text.append(" ", badge("token required", "token"));
    const desc = document.createElement("span");
    desc.className = "desc";
    desc.textContent = server.description || server.url;
    text.append(desc);
    label.append(radio, text);
    item.append(label);
    list.append(item);
  }
  const note = $("servers-note");
  note.hidden = state.servers.length > 0;
  note.textContent = "The service offers no servers; enter one by hand below.";
}

function choose(server) {
  state.chosen = server;
  $("server-url").value = server.url;
  $("server-transport").value = server.transport;
  renderServers();
}

async function loadServers(refresh) {
  $("refresh").disabled = true;
  $("refresh").textContent = "Refreshing…";
  try {
    const response = await call("GET", `/llmchat/servers${refresh ? "?refresh=true" : ""}`);
    state.servers = (await response.json()).servers;
    if (state.chosen) state.chosen = state.servers.find((s) => s.name === state.chosen.name) || null;
    renderServers();
  } catch (err) {
    problem(`The server list could not be loaded: ${err.message}`);
  } finally {
    $("refresh").disabled = false;
    $("refresh").textContent = "Refresh";
  }
}

async function loadModels() {
  try {
    const response = await call("GET", "/llmchat/gateway/models");
    const models = (await response.json()).models;
    const providers = [...new Set(models.map((m) => m.provider))];
    const select = $("provider");
    select.replaceChildren(new Option("service default", ""), ...providers.map((p) => new Option(p, p)));
    const fill = () => {
      $("models").replaceChildren(
        ...models.filter((m) => !select.value || m.provider === select.value).map((m) => new Option(m.id, m.id)),
      );
    };
    select.addEventListener("change", fill);
    fill();
  } catch (err) {
    problem(`The model list could not be loaded: ${err.message}`);
  }
}

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function setStatus(text, kind, tools) {
  const status = $("status");
  status.textContent = text;
  status.className = `badge badge-${kind}`;
  status.title = tools && tools.length ? `Tools: ${tools.join(", ")}` : "";
}

function setConnected(connected) {
  state.connected = connected;
  $("connect").disabled = connected;
  $("disconnect").disabled = !connected;
  $("setup").open = !connected;
  setBusy(false);
}

function setBusy(busy) {
  state.busy = busy;
  $("message").disabled = !state.connected || busy;
  $("send").disabled = !state.connected || busy;
  if (state.connected && !busy) $("message").focus();
}

async function connect() {
  const url = $("server-url").value.trim();
  if (!url) { problem("Pick a server from the list or enter its URL first."); return; }
  if ($("api-key").value) { state.apiKey = $("api-key").value; $("api-key").value = ""; $("api-key").placeholder = "set"; }
  const token = $("server-token").value;
  $("server-token").value = ""; // sent once; never kept or shown back
  const config = { model: $("model").value.trim() };
  const temperature = numberOrNull("temperature");
  const maxTokens = numberOrNull("max-tokens");
  if (temperature !== null) config.temperature = temperature;
  if (maxTokens !== null) config.max_tokens = maxTokens;
  const body = {
    user_id: state.userId,
    server: { url, transport: $("server-transport").value, ...(token ? { auth_token: token } : {}) },
    llm: { provider: $("provider").value, config },
    streaming: true,
  };
  $("connect").disabled = true;
  setStatus("Connecting…", "busy");
  try {
    const reply = await (await call("POST", "/llmchat/connect", body)).json();
    setStatus(`Connected: ${reply.tool_count} tools`, "on", reply.tools);
    setConnected(true);
    notice(`Connected to ${url} with ${reply.provider}; tools: ${reply.tools.join(", ") || "none"}.`);
  } catch (err) {
    setStatus("Disconnected", "off");
    setConnected(false);
    problem(`Could not connect: ${err.message}`);
  }
}

async function disconnect() {
  $("disconnect").disabled = true;
  try {
    await call("POST", "/llmchat/disconnect", { user_id: state.userId });
    notice("Disconnected; the conversation's history is gone.");
  } catch (err) {
    problem(`Disconnect failed: ${err.message}`);
  }
  setStatus("Disconnected", "off");
  setConnected(false);
}

// ---- the composer ---------------------------------------------------------------

function grow() {
  const box = $("message");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 200)}px`;
}

function submit() {
  const box = $("message");
  const text = box.value.trim();
  if (!text || state.busy || !state.connected) return;
  box.value = "";
  grow();
  send(text);
}

document.addEventListener("DOMContentLoaded", () => {
  $("refresh").addEventListener("click", () => loadServers(true));
  $("connect").addEventListener("click", connect);
  $("disconnect").addEventListener("click", disconnect);
  $("server-url").addEventListener("input", () => { state.chosen = null; renderServers(); });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("message").addEventListener("input", grow);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  loadServers(false);
  loadModels();
});
