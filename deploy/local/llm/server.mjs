// recstream llm-local: an OpenAI-compatible chat-completions server for one local
// GGUF model, on loopback only, with node-llama-cpp (pinned in package.json).
//
//   node server.mjs --model /path/model.gguf --port 8088 [--threads 1] [--ctx 4096]
//
// Endpoints:
//   GET  /health                -> {"status": "ok", "model": ..., ...}
//   GET  /v1/models             -> the one model
//   POST /v1/chat/completions   -> OpenAI shape (no streaming, n = 1)
//
// response_format:
//   {"type": "json_schema", "json_schema": {"schema": {...}}} -> grammar from the schema
//   {"type": "json_object"}                                    -> generic JSON grammar
//   absent / {"type": "text"}                                  -> free text
// Requests are served one at a time (one context sequence; the shared prompt
// prefix of consecutive calls is reused). usage.prompt_tokens counts the whole
// rendered prompt; usage.prompt_tokens_details.cached_tokens the reused part.
//
// `recstream llm-local serve|up` copies this file next to the runtime installed by
// `recstream llm-local install-runtime` (ESM imports resolve from the file's folder)
// and runs it there.

import http from "node:http";
import { parseArgs } from "node:util";
import { getLlama, LlamaChat } from "node-llama-cpp";

const MODEL_NAME = "qwen2.5-1.5b-instruct-q4_k_m (local)";
const MAX_BODY = 1 << 20;
const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);

const { values: opt } = parseArgs({
  options: {
    model: { type: "string" },
    port: { type: "string", default: "8088" },
    host: { type: "string", default: "127.0.0.1" },
    threads: { type: "string", default: "1" },
    ctx: { type: "string", default: "4096" },
    "model-name": { type: "string", default: MODEL_NAME },
  },
});
if (!opt.model) {
  console.error("server.mjs: --model is required");
  process.exit(2);
}
if (!LOOPBACK.has(opt.host)) {
  console.error(`server.mjs: refusing to bind ${opt.host}: loopback only`);
  process.exit(2);
}
const threads = Math.max(1, Number.parseInt(opt.threads, 10) || 1);
const contextSize = Math.max(512, Number.parseInt(opt.ctx, 10) || 4096);
const modelName = opt["model-name"];

function log(msg, fields = {}) {
  console.log(JSON.stringify({ ts: new Date().toISOString(), msg, ...fields }));
}

const t0 = Date.now();
const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: "warn" });
const model = await llama.loadModel({ modelPath: opt.model });
const context = await model.createContext({ contextSize, threads, sequences: 1 });
const sequence = context.getSequence();
const chat = new LlamaChat({ contextSequence: sequence });
const jsonGrammar = await llama.getGrammarFor("json");
const schemaGrammars = new Map();
log("model loaded", { model: opt.model, threads, contextSize, load_s: (Date.now() - t0) / 1000 });

class HttpError extends Error {
  constructor(status, message, type = "invalid_request_error") {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function grammarFor(format) {
  if (format == null) return undefined;
  if (typeof format !== "object") throw new HttpError(400, "response_format must be an object");
  if (format.type === "text") return undefined;
  if (format.type === "json_object") return jsonGrammar;
  if (format.type === "json_schema") {
    const schema = format.json_schema?.schema;
    if (schema == null || typeof schema !== "object") {
      throw new HttpError(400, "response_format.json_schema.schema is required");
    }
    const key = JSON.stringify(schema);
    let grammar = schemaGrammars.get(key);
    if (grammar === undefined) {
      try {
        grammar = await llama.createGrammarForJsonSchema(schema);
      } catch (err) {
        throw new HttpError(400, `unsupported JSON schema: ${err.message}`);
      }
      if (schemaGrammars.size > 64) schemaGrammars.clear();
      schemaGrammars.set(key, grammar);
    }
    return grammar;
  }
  throw new HttpError(400, `unsupported response_format.type ${JSON.stringify(format.type)}`);
}

function toHistory(messages) {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new HttpError(400, "messages must be a non-empty array");
  }
  const history = messages.map((m, i) => {
    const text = typeof m?.content === "string" ? m.content
      : Array.isArray(m?.content) ? m.content.map((p) => p?.text ?? "").join("") : null;
    if (text === null) throw new HttpError(400, `messages[${i}].content must be text`);
    if (m.role === "system" || m.role === "developer") return { type: "system", text };
    if (m.role === "user") return { type: "user", text };
    if (m.role === "assistant") return { type: "model", response: [text] };
    throw new HttpError(400, `messages[${i}].role ${JSON.stringify(m.role)} is not supported`);
  });
  history.push({ type: "model", response: [] });
  return history;
}

function promptTokens(history) {
  try {
    const { contextText } = chat.chatWrapper.generateContextState({ chatHistory: history });
    return contextText.tokenize(model.tokenizer).length;
  } catch {
    const text = history.map((h) => h.text ?? (h.response ?? []).join("")).join("\n");
    return model.tokenize(text).length;
  }
}

let queue = Promise.resolve();
function serialised(fn) {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

async function complete(body) {
  if (body.stream) throw new HttpError(400, "stream is not supported");
  if (body.n != null && body.n !== 1) throw new HttpError(400, "only n = 1 is supported");
  const history = toHistory(body.messages);
  const grammar = await grammarFor(body.response_format);
  const maxTokens = Number.isInteger(body.max_tokens) && body.max_tokens > 0
    ? Math.min(body.max_tokens, contextSize) : 512;
  const temperature = typeof body.temperature === "number" ? Math.max(0, body.temperature) : 0;
  const seed = Number.isInteger(body.seed) ? body.seed : undefined;
  return serialised(async () => {
    const started = Date.now();
    const inBefore = sequence.tokenMeter.usedInputTokens;
    const outBefore = sequence.tokenMeter.usedOutputTokens;
    const res = await chat.generateResponse(history, {
      grammar, maxTokens, temperature, seed,
    });
    const evaluated = sequence.tokenMeter.usedInputTokens - inBefore;
    const generatedMeter = sequence.tokenMeter.usedOutputTokens - outBefore;
    const content = res.response;
    const prompt = promptTokens(history);
    const completion = generatedMeter > 0 ? generatedMeter : model.tokenize(content).length;
    const stop = res.metadata?.stopReason;
    const finish = stop === "maxTokens" ? "length" : "stop";
    const ms = Date.now() - started;
    log("completion", {
      prompt_tokens: prompt, evaluated_tokens: evaluated, completion_tokens: completion,
      ms, finish, grammar: body.response_format?.type ?? "text",
    });
    return {
      id: `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`,
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model: modelName,
      choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: finish }],
      usage: {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: { cached_tokens: Math.max(0, prompt - evaluated) },
      },
    };
  });
}

function send(res, status, doc) {
  const raw = JSON.stringify(doc);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(raw) });
  res.end(raw);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new HttpError(413, "request body too large"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

const server = http.createServer(async (req, res) => {
  const url = (req.url ?? "/").split("?")[0];
  try {
    if (req.method === "GET" && url === "/health") {
      return send(res, 200, { status: "ok", model: modelName, threads, context_size: contextSize });
    }
    if (req.method === "GET" && url === "/v1/models") {
      return send(res, 200, { object: "list", data: [{ id: modelName, object: "model", owned_by: "local" }] });
    }
    if (url === "/v1/chat/completions") {
      if (req.method !== "POST") throw new HttpError(405, "use POST");
      let body;
      try {
        body = JSON.parse(await readBody(req));
      } catch (err) {
        if (err instanceof HttpError) throw err;
        throw new HttpError(400, "body is not JSON");
      }
      if (body == null || typeof body !== "object") throw new HttpError(400, "body must be an object");
      return send(res, 200, await complete(body));
    }
    throw new HttpError(404, `no route ${req.method} ${url}`, "not_found");
  } catch (err) {
    const status = err instanceof HttpError ? err.status : 500;
    if (status >= 500) log("error", { error: String(err?.stack ?? err) });
    return send(res, status, {
      error: { message: String(err?.message ?? err), type: err?.type ?? "server_error" },
    });
  }
});

server.listen(Number.parseInt(opt.port, 10), opt.host, () => {
  log("listening", { host: opt.host, port: server.address().port, model: modelName });
});

async function shutdown(signal) {
  log("shutting down", { signal });
  server.close();
  try {
    await context.dispose();
    await model.dispose();
    await llama.dispose();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
