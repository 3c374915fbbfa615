// The API as the console uses it: one token per browser tab, JSON in and out, errors with the
// host's message, and server-sent events read over fetch (EventSource cannot send a bearer token).

const KEY = "approval-host-token";

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/** An API error: the HTTP status and the host's stable code and message. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the host answered ${status}`);
    this.status = status;
    this.code = (body && body.code) || "http_" + status;
    this.body = body;
  }
}

/** Calls the API; resolves to the JSON body (or text for non-JSON answers). */
export async function call(method, path, body, { raw = false, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  const t = token();
  if (t) init.headers.authorization = "Bearer " + t;
  if (body !== undefined) {
    if (raw) {
      init.body = body;
    } else {
      init.headers["content-type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = text;
  try { parsed = text ? JSON.parse(text) : null; } catch { /* text */ }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body === undefined ? {} : body);
export const put = (path, body) => call("PUT", path, body);

/**
 * Reads a server-sent event stream, calling `onEvent(name, data)` for each event, until the
 * stream ends or `signal` aborts. Resolves when the stream ends.
 */
export async function stream(path, onEvent, signal) {
  const response = await fetch(path, {
    headers: { authorization: "Bearer " + token(), accept: "text/event-stream" },
    signal,
  });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { /* none */ }
    throw new ApiError(response.status, body);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (!data) continue;
      let parsed = data;
      try { parsed = JSON.parse(data); } catch { /* text */ }
      onEvent(name, parsed);
    }
  }
}
