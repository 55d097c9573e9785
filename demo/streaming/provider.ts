// A model provider for the streaming demo: `POST /v1/stream` answers with server-sent events, one
// `data: {json}` event at a time with a short pause between them, as a real provider streams a reply.
//
// Env: PORT (default 0: any free port), CHUNKS (events per reply, default 12), CHUNK_PAUSE_MS (default 25).
// stdout: `listening <port>`.

const CHUNKS = Number(process.env.CHUNKS ?? 12);
const PAUSE_MS = Number(process.env.CHUNK_PAUSE_MS ?? 25);
const WORDS = ["agent", "tool", "stream", "token", "reply", "context", "buffer", "delta", "message", "turn"];

function eventText(turn: string, index: number, last: boolean): string {
  let content = "";
  for (let i = 0; content.length < 600; i++) content += WORDS[(index * 7 + i * 3) % WORDS.length] + (i % 11 === 10 ? ". " : " ");
  const logprobs = Array.from({ length: 40 }, (_, i) => ({ token: WORDS[(i + index) % WORDS.length], logprob: -i / 7 }));
  const event = { id: `${turn}-${index}`, delta: { content }, logprobs, finish_reason: last ? "stop" : null };
  return `data: ${JSON.stringify(event)}\n\n`;
}

const encoder = new TextEncoder();
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  async fetch(req) {
    const url = new URL(req.url);
    if (req.method !== "POST" || url.pathname !== "/v1/stream") return new Response("not found", { status: 404 });
    const { turn } = (await req.json()) as { turn: string };
    const body = new ReadableStream({
      async start(controller) {
        for (let i = 0; i < CHUNKS; i++) {
          controller.enqueue(encoder.encode(eventText(turn, i, i === CHUNKS - 1)));
          await Bun.sleep(PAUSE_MS);
        }
        controller.enqueue(encoder.encode("data: [DONE]\n\n"));
        controller.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  },
});
console.log(`listening ${server.port}`);
