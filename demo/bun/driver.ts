// Sends orchestrator turns to demo/bun/server.ts and prints one parseable stats line at the end:
//   turns <n> seconds <s> turns_per_second <x>
// Exits 1 if any request fails (network error, non-2xx status, or a reply that is not the turn JSON),
// 2 on bad arguments.
//
// bun driver.ts [--url URL] [--turns N] [--concurrency C] [--conversations K]
// Env equivalents (flags win): DEMO_URL, TURNS (default 40), CONCURRENCY (default 2), CONVERSATIONS (default 4).
// DEMO_URL defaults to http://127.0.0.1:$PORT when PORT is set.

function usage(message: string): never {
  console.error(`driver: ${message}`);
  console.error("usage: bun driver.ts [--url URL] [--turns N] [--concurrency C] [--conversations K]");
  process.exit(2);
}

function parseArgs(argv: string[]) {
  const opts: Record<string, string | undefined> = {
    url: process.env.DEMO_URL ?? (process.env.PORT ? `http://127.0.0.1:${process.env.PORT}` : undefined),
    turns: process.env.TURNS ?? "40",
    concurrency: process.env.CONCURRENCY ?? "2",
    conversations: process.env.CONVERSATIONS ?? "4",
  };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--(url|turns|concurrency|conversations)(?:=(.*))?$/.exec(argv[i]);
    if (!m) usage(`unknown argument ${argv[i]}`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) usage(`--${m[1]} needs a value`);
    opts[m[1]] = value;
  }
  if (!opts.url) usage("no server URL: pass --url or set DEMO_URL (or PORT)");
  const count = (name: string, min: number) => {
    const n = Number(opts[name]);
    if (!Number.isInteger(n) || n < min) usage(`--${name} must be an integer >= ${min}`);
    return n;
  };
  return {
    url: opts.url!.replace(/\/+$/, ""),
    turns: count("turns", 0),
    concurrency: count("concurrency", 1),
    conversations: count("conversations", 1),
  };
}

const TOPICS = ["the billing module", "the LSP client", "the session store", "the HTTP transport", "the test suite"];

async function sendTurn(url: string, i: number, conversations: number): Promise<void> {
  const conversation = `conv-${i % conversations}`;
  const prompt = `Turn ${i}: review ${TOPICS[i % TOPICS.length]} and propose a patch (${"detail ".repeat(i % 7)})`;
  const res = await fetch(`${url}/turn`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ conversation, prompt }),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
  let reply: any;
  try {
    reply = JSON.parse(text);
  } catch {
    throw new Error(`reply is not JSON: ${text.slice(0, 200)}`);
  }
  if (typeof reply?.turn !== "string" || reply.conversation !== conversation) {
    throw new Error(`unexpected reply ${text.slice(0, 200)}`);
  }
}

const { url, turns, concurrency, conversations } = parseArgs(process.argv.slice(2));

let next = 0;
let done = 0;
const failures: string[] = [];
const started = performance.now();
async function worker() {
  while (next < turns) {
    const i = next++;
    try {
      await sendTurn(url, i, conversations);
      done++;
    } catch (err) {
      failures.push(`turn ${i} (conv-${i % conversations}): ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(turns, 1)) }, worker));
const seconds = (performance.now() - started) / 1000;

for (const f of failures) console.error(`driver: ${f}`);
console.log(`turns ${done} seconds ${seconds.toFixed(3)} turns_per_second ${(seconds > 0 ? done / seconds : 0).toFixed(2)}`);
process.exit(failures.length === 0 ? 0 : 1);
