// A streaming agent server like dispatch-server, for dispatch-leaktrace: built with
// `bun build --compile --sourcemap server.ts --outfile dispatch-server` and run as that executable.
//
// `POST /turn` `{"conversation": string, "prompt": string}` runs one orchestrator turn: it streams a reply
// from the provider (provider.ts) with a real fetch() and reads it chunk by chunk, as an AI SDK does. Turns
// run concurrently. What a turn keeps:
//
//   retainChunkForReplay  LEAK: every chunk reader.read() returns is kept for a "replay" log. Bun gives
//                         each chunk its own 256 KiB ArrayBuffer (zero-filled), so keeping a few-KB view
//                         keeps 256 KiB: about CHUNKS x 256 KiB a turn.
//   appendToHistory       LEAK: the conversation's messages (parsed, with per-word tokens) are kept for
//                         ever; parsing makes temporaries at the same place.
//   cacheReply            not a leak: a bounded LRU of the last CACHE_ENTRIES replies.
//   renderPreview         not a leak: several MB of temporaries a turn, garbage once the turn ends.
//
// stdout: `listening <port>`, then `turn start <id>` and `turn end <id>` for each turn.
// Env: PORT (default 0), PROVIDER_URL (required), LEAK = all (default) | chunks | history | none: a leak
// switched off runs the same code but drops its data when the turn ends (the control runs that measure
// each leak's truth).

const PROVIDER_URL = process.env.PROVIDER_URL;
if (!PROVIDER_URL) {
  console.error("PROVIDER_URL is required (the provider's base URL)");
  process.exit(2);
}
const LEAK = process.env.LEAK ?? "all";
if (!["all", "chunks", "history", "none"].includes(LEAK)) {
  console.error(`LEAK must be all, chunks, history or none, not ${LEAK}`);
  process.exit(2);
}
const KEEP_CHUNKS = LEAK === "all" || LEAK === "chunks";
const KEEP_HISTORY = LEAK === "all" || LEAK === "history";
const CACHE_ENTRIES = 16;

type Token = { text: string; offset: number; weight: number };
type Message = { role: string; text: string; tokens: Token[]; at: number };

const replayLog: Uint8Array[] = [];
const conversations = new Map<string, Message[]>();
const replyCache = new Map<string, { reply: string; bytes: Buffer }>();
let turnSeq = 0;
let turnsDone = 0;

function retainChunkForReplay(chunk: Uint8Array) {
  replayLog.push(chunk);
}

function appendToHistory(conversation: string, role: string, text: string) {
  const tokens: Token[] = [];
  let offset = 0;
  for (const word of text.split(" ")) {
    tokens.push({ text: word.toLowerCase(), offset, weight: word.length / 7 });
    offset += word.length + 1;
  }
  const draft = JSON.parse(JSON.stringify({ role, text, tokens })); // a parse temporary, dropped at once
  let history = conversations.get(conversation);
  if (history === undefined) {
    history = [];
    conversations.set(conversation, history);
  }
  history.push({ role, text, tokens: draft.tokens, at: Date.now() });
}

function cacheReply(key: string, reply: string) {
  replyCache.delete(key);
  replyCache.set(key, { reply, bytes: Buffer.from(reply, "utf8") });
  while (replyCache.size > CACHE_ENTRIES) replyCache.delete(replyCache.keys().next().value as string);
}

function renderPreview(reply: string): number {
  const layout = new Float64Array(256 * 1024);
  for (let i = 0; i < layout.length; i += 64) layout[i] = i * 1.5 + reply.length;
  const html = Array.from({ length: 60 }, (_, i) => `<p data-i="${i}">${reply}</p>`).join("\n");
  const bytes = new TextEncoder().encode(html);
  return layout[64] + bytes.length;
}

async function streamProviderReply(turn: string, prompt: string): Promise<string> {
  const response = await fetch(`${PROVIDER_URL}/v1/stream`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ turn, prompt }),
  });
  if (!response.ok || response.body === null) throw new Error(`provider answered ${response.status}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  let reply = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    retainChunkForReplay(value);
    pending += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const line = pending.slice(0, end);
      pending = pending.slice(end + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      reply += JSON.parse(line.slice(6)).delta.content;
    }
  }
  return reply;
}

async function runTurn(conversation: string, prompt: string) {
  const id = `t${++turnSeq}`;
  console.log(`turn start ${id}`);
  const replayMark = replayLog.length;
  try {
    appendToHistory(conversation, "user", prompt);
    const reply = await streamProviderReply(id, prompt);
    appendToHistory(conversation, "assistant", reply);
    cacheReply(`${conversation}:${prompt}`, reply);
    const preview = renderPreview(reply);
    if (!KEEP_CHUNKS) replayLog.splice(replayMark);
    if (!KEEP_HISTORY) conversations.delete(conversation);
    turnsDone++;
    return { turn: id, replyChars: reply.length, preview };
  } finally {
    console.log(`turn end ${id}`);
  }
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  async fetch(req) {
    const url = new URL(req.url);
    if (req.method === "GET" && url.pathname === "/health") {
      return Response.json({ turns: turnsDone, chunks: replayLog.length, rss: process.memoryUsage().rss });
    }
    if (req.method === "POST" && url.pathname === "/turn") {
      const body = (await req.json()) as { conversation: string; prompt: string };
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
