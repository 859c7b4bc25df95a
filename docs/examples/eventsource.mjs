// Stream a chat answer into a terminal with an EventSource, as a browser page would.
//   npm install eventsource    (browsers have EventSource built in)
//   node eventsource.mjs http://127.0.0.1:8000 "$TICKET" demo "Hello"
// The ticket comes from POST /v1/tickets (an EventSource cannot send a bearer header).
import { EventSource } from "eventsource";

const [base, ticket, model = "demo", prompt = "Hello"] = process.argv.slice(2);
const url = `${base}/v1/chat/stream?${new URLSearchParams({ model, prompt, ticket })}`;
const source = new EventSource(url);

source.onmessage = (event) => {
  const chunk = JSON.parse(event.data);
  if (chunk.error) {
    console.error(`\nerror: ${chunk.error.message}`);
    source.close();
    process.exitCode = 1;
    return;
  }
  const content = chunk.choices[0]?.delta?.content;
  if (content) process.stdout.write(content);
};
// The end of the stream is a named event: every unnamed message is JSON.
source.addEventListener("done", () => {
  process.stdout.write("\n");
  source.close();
});
source.onerror = (error) => {
  console.error(`connection error: ${error.message ?? "unknown"}`);
  source.close();
  process.exitCode = 1;
};
