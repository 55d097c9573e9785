// A small mock of dispatch-server (the Bun AI-agent backend), for dispatch-leaktrace.
//
// Each POST /turn runs one "orchestrator turn": a simulated provider stream is consumed and the reply
// assembled. Two leaks and two non-leaks happen inside a turn, each in its own named function:
//
//   retainStreamChunk  LEAK: every streamed chunk is copied into a new Buffer (mimalloc memory inside
//                      Bun) that is pushed onto a module-level array nobody ever clears.
//   buildMessage       LEAK: message objects appended to a per-conversation array, kept forever in a
//                      module-level Map.
//   cacheReply         not a leak: a bounded LRU cache (CACHE_ENTRIES) of full replies.
//   renderTemporary    not a leak: a few MB of temporaries per turn, garbage once the turn ends.
//
// stdout carries only these lines, one per event:
//   listening <port>
//   turn start <id>
//   turn end <id>
// Everything else (errors) goes to stderr.
//
// Env: PORT (default 0: any free port). DEMO_LEAK selects which leaks keep their data: "all" (default),
// "chunks", "messages", or "none" (also "0"). A leak that is switched off still runs the same code and
// makes the same allocations, but its data is dropped when the turn ends: control runs that show how
// much each leak retains and that the temporaries do not stay.

import { noInline } from "bun:jsc";

// ---- sizes (per turn, on average) ---------------------------------------------------------------
const CHUNKS_MIN = 40; // provider stream: 40-80 chunks a turn
const CHUNKS_MAX = 80;
const CHUNK_BYTES_MIN = 8 * 1024; // each a raw event of 8-16 KB: ~0.7 MB a turn retained by retainStreamChunk
const CHUNK_BYTES_MAX = 16 * 1024;
const DELTA_CHARS_MIN = 200; // the reply text carried by each event: ~21 KB of reply a turn
const DELTA_CHARS_MAX = 500;
const CACHE_ENTRIES = 32;
const RENDER_LAYOUT_ENTRIES = 256 * 1024; // Float64Array, 2 MiB
const RENDER_RASTER_BYTES = 1536 * 1024; // Buffer, 1.5 MiB
const RENDER_PREVIEW_COPIES = 40; // preview document: 40 copies of the reply, ~0.85 MB string + as many bytes

const LEAK_MODE = process.env.DEMO_LEAK ?? "all";
if (!["all", "chunks", "messages", "none", "0"].includes(LEAK_MODE)) {
  console.error(`DEMO_LEAK must be all, chunks, messages or none, not ${LEAK_MODE}`);
  process.exit(2);
}
const LEAK_CHUNKS = LEAK_MODE === "all" || LEAK_MODE === "chunks";
const LEAK_MESSAGES = LEAK_MODE === "all" || LEAK_MODE === "messages";

// ---- module-level state --------------------------------------------------------------------------
/** LEAK 1: raw provider chunks, never cleared. */
const retainedChunks: Buffer[] = [];
let retainedChunkBytes = 0;

type Token = { id: number; start: number; length: number };
type Part = { type: string; text: string; offset: number; length: number; words: number };
type Message = {
  id: string;
  role: string;
  createdAt: string;
  content: string;
  searchText: string;
  parts: Part[];
  tokens: Token[];
  meta: { chars: number; words: number; digest: number };
};
/** LEAK 2: every conversation's messages, kept forever. */
const conversations = new Map<string, Message[]>();

type CacheEntry = { key: string; text: string; encoded: Buffer; digest: number; storedAt: number };
/** Not a leak: Map iteration order is insertion order, so the first key is the least recently used. */
const replyCache = new Map<string, CacheEntry>();
let cacheEvictions = 0;

let turnSeq = 0;
let messageSeq = 0;
let turnsDone = 0;

// ---- helpers -------------------------------------------------------------------------------------
const WORDS = [
  "Agent", "tool", "Stream", "token", "Reply", "context", "Window", "buffer", "Provider", "delta",
  "message", "Orchestrator", "turn", "cache", "Memory", "session", "Conversation", "chunk", "model",
  "Prompt", "schema", "Result", "function", "Call", "output", "Input", "search", "File", "patch",
  "review", "Plan", "step", "Summary", "error", "Retry", "latency", "Usage", "stop", "Reason", "json",
];

function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The simulated provider: an async generator of raw server-sent events, each an 8-16 KB string
 * `data: {json}` carrying a text delta plus the bulky metadata real providers attach (log-probs).
 * Built with some CPU work; no network.
 */
async function* providerStream(turnId: string, prompt: string): AsyncGenerator<string> {
  const rand = xorshift(hashString(turnId + prompt));
  const chunks = CHUNKS_MIN + (rand() % (CHUNKS_MAX - CHUNKS_MIN + 1));
  for (let i = 0; i < chunks; i++) {
    const deltaChars = DELTA_CHARS_MIN + (rand() % (DELTA_CHARS_MAX - DELTA_CHARS_MIN + 1));
    let delta = "";
    while (delta.length < deltaChars) {
      delta += WORDS[rand() % WORDS.length] + (rand() % 9 === 0 ? ". " : " ");
    }
    const target = CHUNK_BYTES_MIN + (rand() % (CHUNK_BYTES_MAX - CHUNK_BYTES_MIN + 1));
    const logprobs: { token: string; logprob: number }[] = [];
    let estimate = delta.length + 160;
    while (estimate < target) {
      const token = WORDS[rand() % WORDS.length];
      logprobs.push({ token, logprob: -((rand() % 100000) / 10000) });
      estimate += token.length + 32;
    }
    const event = {
      id: `${turnId}-${i}`,
      object: "chat.completion.chunk",
      index: i,
      delta: { role: "assistant", content: delta },
      logprobs,
      finish_reason: i === chunks - 1 ? "stop" : null,
    };
    yield `data: ${JSON.stringify(event)}\n\n`;
    if (i % 8 === 7) await yieldToEventLoop(); // a network read would let other turns run
  }
}

// ---- the four code paths -------------------------------------------------------------------------

/** LEAK 1: copy a raw streamed chunk into a new Buffer and keep it forever. Returns a frame checksum. */
function retainStreamChunk(chunk: string): number {
  // Buffer.from(string) encodes in Bun's native code into a store from Bun's mimalloc. (Not
  // Buffer.allocUnsafe, new Uint8Array or Buffer.from(Uint8Array): in Bun 1.3.13 those stores come from
  // JSC's 64 GiB primitive gigacage instead; see README.md.)
  const bytes = Buffer.from(chunk, "utf8");
  let sum = bytes.length;
  for (let i = 0; i < bytes.length; i += 61) sum = (Math.imul(sum, 31) + bytes[i]) >>> 0;
  retainedChunks.push(bytes);
  retainedChunkBytes += bytes.length;
  return sum;
}

/** LEAK 2 (its objects are appended to a conversation that is never trimmed): one chat message. */
function buildMessage(role: string, text: string): Message {
  const searchText = text.toLowerCase();
  const parts: Part[] = [];
  const tokens: Token[] = [];
  let offset = 0;
  let words = 0;
  for (const sentence of text.split(". ")) {
    let sentenceWords = 0;
    let start = offset;
    for (const word of sentence.split(" ")) {
      if (word.length > 0) {
        tokens.push({ id: hashString(word) & 0xffff, start, length: word.length });
        sentenceWords++;
      }
      start += word.length + 1;
    }
    parts.push({ type: "text", text: sentence, offset, length: sentence.length, words: sentenceWords });
    offset += sentence.length + 2;
    words += sentenceWords;
  }
  let digest = tokens.length;
  for (let i = 0; i < tokens.length; i++) digest = (Math.imul(digest, 33) ^ tokens[i].id) >>> 0;
  return {
    id: `msg_${++messageSeq}_${role}`,
    role,
    createdAt: new Date().toISOString(),
    content: text,
    searchText,
    parts,
    tokens,
    meta: { chars: text.length, words, digest },
  };
}

/** Not a leak: keep the last CACHE_ENTRIES replies (text and encoded bytes); evict the least recent. */
function cacheReply(key: string, reply: string): number {
  const existing = replyCache.get(key);
  if (existing !== undefined) {
    replyCache.delete(key);
    replyCache.set(key, existing);
    return existing.digest;
  }
  const encoded = Buffer.from(reply, "utf8");
  let digest = 0;
  for (let i = 0; i < encoded.length; i += 17) digest = (Math.imul(digest, 131) + encoded[i]) >>> 0;
  replyCache.set(key, { key, text: reply, encoded, digest, storedAt: Date.now() });
  while (replyCache.size > CACHE_ENTRIES) {
    const oldest = replyCache.keys().next().value as string;
    replyCache.delete(oldest);
    cacheEvictions++;
  }
  return digest;
}

/** Not a leak: render a preview of the turn into large temporaries (~5 MB) that die with the turn. */
function renderTemporary(reply: string, history: Message[]): number {
  const layout = new Float64Array(RENDER_LAYOUT_ENTRIES);
  for (let i = 0; i < layout.length; i++) layout[i] = (i * 1.618 + reply.length) % 97;

  const raster = Buffer.alloc(RENDER_RASTER_BYTES);
  for (let i = 0; i < raster.length; i += 512) raster[i] = reply.charCodeAt(i % reply.length) & 0xff;

  const lines: string[] = [];
  const recent = history.slice(-2);
  for (let copy = 0; copy < RENDER_PREVIEW_COPIES; copy++) {
    const m = recent[copy % recent.length];
    lines.push(`<section data-copy="${copy}" data-role="${m.role}">${copy % 2 ? reply : reply.toUpperCase()}</section>`);
  }
  const html = lines.join("\n");
  const encoded = Buffer.from(html, "utf8");

  let sum = 0;
  for (let i = 0; i < encoded.length; i += 4099) sum = (sum + encoded[i] + raster[i % raster.length]) >>> 0;
  for (let i = 0; i < layout.length; i += 1021) sum = (sum + layout[i]) >>> 0;
  return sum;
}

// Keep one JIT frame per function: without this, DFG/FTL may inline them into their caller and the
// frame (and its name) vanishes from the stack. The real server would not do this.
for (const fn of [retainStreamChunk, buildMessage, cacheReply, renderTemporary, hashString]) noInline(fn);

// ---- the orchestrator turn -----------------------------------------------------------------------

async function runTurn(conversation: string, prompt: string) {
  const id = `t${++turnSeq}`;
  console.log(`turn start ${id}`);
  try {
    let history = conversations.get(conversation);
    if (history === undefined) {
      history = [];
      conversations.set(conversation, history);
    }
    history.push(buildMessage("user", prompt));

    const deltas: string[] = [];
    let chunks = 0;
    let frameSum = 0;
    for await (const chunk of providerStream(id, prompt)) {
      frameSum = (frameSum + retainStreamChunk(chunk)) >>> 0;
      const event = JSON.parse(chunk.slice(6));
      deltas.push(event.delta.content);
      chunks++;
    }
    const reply = deltas.join("");
    history.push(buildMessage("assistant", reply));
    const digest = cacheReply(`${conversation}:${hashString(prompt)}`, reply);
    const preview = renderTemporary(reply, history);

    if (!LEAK_CHUNKS) {
      retainedChunks.length = 0;
      retainedChunkBytes = 0;
    }
    if (!LEAK_MESSAGES) conversations.delete(conversation);
    turnsDone++;
    return { turn: id, conversation, chunks, replyChars: reply.length, messages: history.length, frameSum, digest, preview };
  } finally {
    console.log(`turn end ${id}`);
  }
}

function stats() {
  let messages = 0;
  for (const history of conversations.values()) messages += history.length;
  return {
    ok: true,
    pid: process.pid,
    leaks: { chunks: LEAK_CHUNKS, messages: LEAK_MESSAGES },
    turns: turnsDone,
    retainedChunks: retainedChunks.length,
    retainedChunkBytes,
    conversations: conversations.size,
    messages,
    cacheEntries: replyCache.size,
    cacheEvictions,
    rss: process.memoryUsage().rss,
  };
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  async fetch(req) {
    const url = new URL(req.url);
    if (req.method === "GET" && url.pathname === "/health") return Response.json(stats());
    if (req.method === "POST" && url.pathname === "/turn") {
      let body: any;
      try {
        body = await req.json();
      } catch {
        return Response.json({ error: "body is not JSON" }, { status: 400 });
      }
      if (typeof body?.conversation !== "string" || typeof body?.prompt !== "string") {
        return Response.json({ error: "need {conversation: string, prompt: string}" }, { status: 400 });
      }
      try {
        return Response.json(await runTurn(body.conversation, body.prompt));
      } catch (err) {
        console.error("turn failed:", err);
        return Response.json({ error: String(err) }, { status: 500 });
      }
    }
    return Response.json({ error: "not found" }, { status: 404 });
  },
});

console.log(`listening ${server.port}`);

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    server.stop(true);
    process.exit(0);
  });
}
