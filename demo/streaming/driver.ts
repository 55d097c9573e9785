// Sends orchestrator turns to the streaming demo server: --url URL --turns N (40) --concurrency C (4)
// --conversations K (6). Exits 1 if a turn fails, 2 on bad arguments.

const args = process.argv.slice(2);
const option = (name: string, fallback: string) => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
};
const url = option("url", "");
const turns = Number(option("turns", "40"));
const concurrency = Number(option("concurrency", "4"));
const conversations = Number(option("conversations", "6"));
if (!url || !(turns > 0) || !(concurrency > 0) || !(conversations > 0)) {
  console.error("usage: driver.ts --url URL [--turns N] [--concurrency C] [--conversations K]");
  process.exit(2);
}

let next = 0;
let failed = 0;
async function worker() {
  while (next < turns) {
    const n = next++;
    const response = await fetch(`${url}/turn`, {
      method: "POST",
      body: JSON.stringify({ conversation: `c${n % conversations}`, prompt: `question ${n}: what changed in turn ${n}?` }),
    });
    if (!response.ok) failed++;
    await response.arrayBuffer();
  }
}
await Promise.all(Array.from({ length: concurrency }, worker));
if (failed > 0) {
  console.error(`${failed} turns failed`);
  process.exit(1);
}
