// The web window: it speaks the client's own requests and responses.
"use strict";

async function openSession() {
  const token = location.hash.slice(1);
  if (token) {
    // The token buys the session cookie once; then it leaves the address bar.
    await fetch("/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    history.replaceState(null, "", "/");
  }
}

async function call(request) {
  const reply = await fetch("/api/request", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request),
  });
  if (!reply.ok) {
    throw new Error(await reply.text());
  }
  return reply.json();
}

async function start() {
  const state = document.getElementById("state");
  try {
    await openSession();
    const snapshot = await call({ op: "snapshot" });
    const me = snapshot.me || {};
    state.textContent = me.name ? `Signed in as ${me.name}` : "Not signed in";
  } catch (e) {
    state.textContent = `Cannot reach your client: ${e.message}`;
  }
}

start();
