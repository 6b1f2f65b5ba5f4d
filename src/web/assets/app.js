// The Messenger window as a web page. It has no model of its own: it
// starts from the client's snapshot, follows the client's numbered events,
// and asks with the client's own requests (docs/protocol.md §7 and §7.1).
// Everything shown is set as text, never as markup.
"use strict";

const HISTORY_PAGE = 100;
const TYPING_SHOWN_MS = 8000;
const TYPING_REPEAT_MS = 3000;
const TYPING_IDLE_MS = 5000;

const state = {
  run: null,
  seq: 0,
  me: null,
  contacts: new Map(),
  blocked: new Set(),
  unread: new Map(),
  requests: [],
  transfers: new Map(),
  invitations: [],
  invitedMe: [],
  typing: new Map(), // name -> time it stops being shown
  conversations: new Map(), // name -> conversation
  active: null,
  events: null,
  retry: null,
};

// ---- talking to the client -------------------------------------------

/** The page's own key (the cookie's second half): kept per origin, so
 * no server on another port of this machine ever sees it. */
let pageKey = sessionStorage.getItem("messenger-key") || "";

async function openSession() {
  const token = location.hash.slice(1);
  if (!token) return;
  // The token buys the session once; then it leaves the address bar (and
  // the history), so it is never shown or sent again.
  const reply = await fetch("/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  });
  history.replaceState(null, "", "/");
  if (reply.ok) {
    pageKey = (await reply.json()).key;
    sessionStorage.setItem("messenger-key", pageKey);
  } else if (reply.status === 401) {
    state.tokenRefused = await reply.text();
  } else {
    throw new Error(await reply.text());
  }
}

function keyed(headers) {
  return { ...headers, "X-Messenger-Key": pageKey };
}

async function post(path, body) {
  const reply = await fetch(path, {
    method: "POST",
    headers: keyed({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  if (!reply.ok) {
    const why = await reply.text();
    const error = new Error(why || `the client answered ${reply.status}`);
    error.status = reply.status;
    throw error;
  }
  return reply.json();
}

/** One request of the library's; a `failed` reply becomes an error. */
async function call(request) {
  const reply = await post("/api/request", request);
  if (reply.reply === "failed") {
    const error = new Error(reply.message);
    error.kind = reply.kind;
    throw error;
  }
  return reply;
}

function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- start, snapshot, events -----------------------------------------

async function start() {
  try {
    await openSession();
  } catch (e) {
    showBanner(`Cannot reach your client: ${e.message}`);
  }
  await load();
}

/** Takes a snapshot and follows the events after it. */
async function load() {
  clearTimeout(state.retry);
  if (state.events) {
    state.events.close();
    state.events = null;
  }
  let snapshot;
  try {
    snapshot = await call({ op: "snapshot" });
  } catch (e) {
    if (e.status === 401) {
      showBanner(
        state.tokenRefused
          ? "This address was used already, by this page or by someone else: its token works once. If you did not open it before, someone else may have: stop `messenger web` and start it again, then open the new address."
          : "This page needs the address your client printed when it started (it changes with every start). Open that address again.",
      );
      return;
    }
    if (e.kind === "no_name") {
      await showSignIn();
      return;
    }
    showBanner(`Waiting for your client: ${e.message}`);
    state.retry = setTimeout(load, 2000);
    return;
  }
  hideBanner();
  applySnapshot(snapshot);
  follow();
}

function follow() {
  const query = `run=${encodeURIComponent(state.run)}&after=${state.seq}&key=${encodeURIComponent(pageKey)}`;
  const source = new EventSource(`/api/events?${query}`);
  state.events = source;
  source.onmessage = (frame) => {
    let reply;
    try {
      reply = JSON.parse(frame.data);
    } catch (e) {
      return;
    }
    if (reply.reply === "event") {
      state.seq = reply.seq;
      applyEvent(reply.event);
    } else if (reply.reply === "failed") {
      // The client restarted, or this page fell too far behind: start
      // again from a new snapshot (after a pause if it is not there).
      source.close();
      state.events = null;
      if (reply.kind === "events_missed") {
        load();
      } else {
        showBanner(`Waiting for your client: ${reply.message}`);
        state.retry = setTimeout(load, 2000);
      }
    }
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (the server answered, but not with events):
      // the snapshot says why, or starts again.
      state.events = null;
      load();
      return;
    }
    // The browser reconnects by itself, resuming after the last event.
    showBanner("Reconnecting to your client…");
  };
  source.onopen = () => hideBanner();
}

function applySnapshot(s) {
  state.run = s.run;
  state.seq = s.seq;
  state.me = s.me;
  state.connection = null;
  state.contacts = new Map(s.contacts.map((c) => [c.name, c]));
  state.blocked = new Set(s.blocked);
  state.unread = new Map(s.unread.map((u) => [u.name, u.count]));
  state.requests = s.requests;
  state.transfers = new Map(s.transfers.map((t) => [t.id, t]));
  state.invitations = s.invitations;
  state.invitedMe = s.invited_me;
  el("sign-in").hidden = true;
  el("app").hidden = false;
  renderMe();
  renderContacts();
  renderRequests();
  // Conversations open before a restart are read again.
  for (const conversation of state.conversations.values()) {
    conversation.generation += 1;
    conversation.loading = false;
    conversation.loaded = false;
    conversation.oldest = null;
    conversation.complete = false;
    conversation.stick = true;
    conversation.messages.clear();
    conversation.log.replaceChildren();
    loadOlder(conversation);
    renderInvitations(conversation);
  }
  renderTabs();
  for (const message of s.outbox) showMessage(message);
}

function applyEvent(event) {
  switch (event.event) {
    case "online":
      state.me.name = event.name;
      state.me.online = true;
      state.connection = null;
      renderMe();
      break;
    case "reconnecting":
      state.connection = `Reconnecting: ${event.reason}`;
      renderMe();
      break;
    case "registration_refused":
      state.me.online = false;
      state.connection = `Signed out: ${event.reason}`;
      renderMe();
      break;
    case "my_status":
      state.me.status = event.status;
      state.me.text = event.text;
      renderMe();
      break;
    case "contacts":
      state.contacts = new Map(event.contacts.map((c) => [c.name, c]));
      renderContacts();
      renderTabs();
      break;
    case "presence": {
      const contact = state.contacts.get(event.name);
      if (contact) {
        contact.presence = event.presence;
        contact.status_text = event.status_text;
        contact.last_seen = event.last_seen;
        renderContacts();
        renderTabs();
      }
      break;
    }
    case "blocked":
      state.blocked = new Set(event.names);
      renderContacts();
      break;
    case "unread":
      if (event.count > 0) state.unread.set(event.name, event.count);
      else state.unread.delete(event.name);
      // What arrives in the conversation being read is read.
      if (event.count > 0 && event.name === state.active) markRead(event.name);
      renderContacts();
      renderTabs();
      break;
    case "requests":
      state.requests = event.requests;
      renderRequests();
      break;
    case "key_changed":
      // The `contacts` event that follows carries the mark; the warning
      // is drawn from it.
      break;
    case "message":
      onMessage(event.message);
      break;
    case "queued":
    case "sent":
    case "delivered":
    case "failed":
      showMessage(event);
      break;
    case "typing":
      if (event.active) state.typing.set(event.name, Date.now() + TYPING_SHOWN_MS);
      else state.typing.delete(event.name);
      renderTyping(event.name);
      renderContacts();
      setTimeout(() => {
        renderTyping(event.name);
        renderContacts();
      }, TYPING_SHOWN_MS + 50);
      break;
    case "nudge":
      onNudge(event.name);
      break;
    case "transfer": {
      const old = state.transfers.get(event.id);
      const received = old ? old.received : 0;
      state.transfers.set(event.id, { ...event, received });
      renderTransfer(event.id);
      break;
    }
    case "progress":
      onProgress(event.id, event.done, event.size);
      break;
    case "receiving":
      onProgress(event.id, event.offset, event.size);
      break;
    case "transfer_waiting":
      onTransferWaiting(event.id, event.reason);
      break;
    case "invitations":
      state.invitations = event.invitations;
      state.invitedMe = event.invited_me;
      for (const conversation of state.conversations.values()) renderInvitations(conversation);
      break;
    default:
      break;
  }
}

// ---- sign in -----------------------------------------------------------

async function showSignIn() {
  el("app").hidden = true;
  el("sign-in").hidden = false;
  try {
    const reply = await fetch("/api/sign_in", { headers: keyed({}) });
    const form = await reply.json();
    if (form.signed_in) {
      load();
      return;
    }
    if (form.rendezvous && !el("sign-in-node").value) el("sign-in-node").value = form.rendezvous;
  } catch (e) {
    // The form works without the remembered node.
  }
  el(el("sign-in-node").value ? "sign-in-name" : "sign-in-node").focus();
}

async function signIn(event) {
  event.preventDefault();
  const button = el("sign-in-button");
  const error = el("sign-in-error");
  error.textContent = "";
  button.disabled = true;
  button.textContent = "Signing in…";
  try {
    const reply = await post("/api/sign_in", {
      rendezvous: el("sign-in-node").value,
      name: el("sign-in-name").value,
    });
    if (reply.reply === "failed") throw new Error(reply.message);
    await load();
  } catch (e) {
    error.textContent = e.message;
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
}

// ---- me ----------------------------------------------------------------

const STATUS_WORDS = { online: "Online", away: "Away", busy: "Busy", invisible: "Appear offline" };

function renderMe() {
  const me = state.me;
  el("me-name").textContent = me.name || "(no name)";
  let connection = state.connection;
  if (!connection) connection = me.online ? `Signed in as ${me.name}` : "Connecting…";
  el("me-connection").textContent = connection;
  const status = el("me-status");
  if (document.activeElement !== status) status.value = me.status;
  const text = el("me-text");
  if (document.activeElement !== text) text.value = me.text || "";
  el("notify").hidden = !("Notification" in window) || Notification.permission !== "default";
}

async function setStatus() {
  try {
    await call({ op: "status", status: el("me-status").value, text: el("me-text").value });
    el("side-error").textContent = "";
  } catch (e) {
    el("side-error").textContent = e.message;
  }
}

// ---- contacts ----------------------------------------------------------

const PRESENCE_WORDS = { online: "Online", away: "Away", busy: "Busy", offline: "Offline" };

function presenceOf(contact) {
  return contact.presence || "offline";
}

function isTyping(name) {
  const until = state.typing.get(name);
  return until !== undefined && until > Date.now();
}

function renderContacts() {
  const list = el("contacts");
  // The list is drawn anew: the focus goes back where it was.
  const active = document.activeElement;
  const focusedItem = list.contains(active) ? active.closest("li.contact") : null;
  const focus = focusedItem ? { name: focusedItem.dataset.name, label: active.getAttribute("aria-label") || active.textContent } : null;
  const contacts = [...state.contacts.values()].sort((a, b) => a.name.localeCompare(b.name));
  const online = contacts.filter((c) => presenceOf(c) !== "offline" && !c.blocked);
  const offline = contacts.filter((c) => presenceOf(c) === "offline" || c.blocked);
  const items = [];
  for (const [title, group] of [["Online", online], ["Offline", offline]]) {
    const heading = h("li", { class: "group", role: "presentation" }, `${title} (${group.length})`);
    items.push(heading);
    for (const contact of group) items.push(contactItem(contact));
  }
  list.replaceChildren(...items);
  if (focus) {
    const item = list.querySelector(`li.contact[data-name="${CSS.escape(focus.name)}"]`);
    if (item) {
      const buttons = [...item.querySelectorAll("button")];
      const same = buttons.find((b) => (b.getAttribute("aria-label") || b.textContent) === focus.label);
      (same || buttons[0]).focus();
    }
  }
  renderKeyWarnings();
  const blockedOthers = [...state.blocked].filter((n) => !state.contacts.has(n)).sort();
  el("blocked").hidden = blockedOthers.length === 0;
  el("blocked-list").replaceChildren(
    ...blockedOthers.map((name) =>
      h("li", {}, h("span", {}, name), " ", button("Unblock", () => act({ op: "unblock", name }), `Unblock ${name}`)),
    ),
  );
}

function contactItem(contact) {
  const name = contact.name;
  const words = [name, contact.blocked ? "Blocked" : PRESENCE_WORDS[presenceOf(contact)]];
  const unread = state.unread.get(name) || 0;
  const open = h("button", { type: "button", class: "open" });
  open.append(
    h("span", { class: `dot ${contact.blocked ? "blocked" : presenceOf(contact)}`, "aria-hidden": "true" }),
    h("span", { class: "name" }, name),
    " ",
    h("span", { class: "presence" }, words[1]),
  );
  if (contact.status_text) {
    open.append(" ", h("span", { class: "text" }, contact.status_text));
    words.push(contact.status_text);
  }
  if (isTyping(name)) {
    open.append(" ", h("span", { class: "typing-mark" }, "typing…"));
    words.push("typing");
  }
  if (contact.key_changed_to) {
    open.append(" ", h("span", { class: "key-mark" }, "⚠ key changed"));
    words.push("key changed");
  }
  if (unread > 0) {
    open.append(" ", h("span", { class: "unread" }, `${unread} unread`));
    words.push(`${unread} unread`);
  }
  open.setAttribute("aria-label", words.join(", "));
  open.addEventListener("click", () => openConversation(name, true));
  const actions = h(
    "span",
    { class: "actions" },
    contact.blocked
      ? button("Unblock", () => act({ op: "unblock", name }), `Unblock ${name}`)
      : button("Block", () => act({ op: "block", name }), `Block ${name}`),
    button("Remove", () => removeContact(name), `Remove ${name}`),
  );
  return h("li", { class: "contact", "data-name": name }, open, actions);
}

function renderKeyWarnings() {
  const warnings = [...state.contacts.values()].filter((c) => c.key_changed_to);
  el("key-warnings").replaceChildren(
    ...warnings.map((c) =>
      h(
        "p",
        { class: "key-warning" },
        `⚠ ${c.name}'s key has changed: messages from the new key are not shown as ${c.name}'s, and nothing is sent to it, until you trust it. Make sure it is really ${c.name} (ask them another way) first. `,
        button("Trust the new key", () => act({ op: "contacts_trust", name: c.name }), `Trust ${c.name}'s new key`),
      ),
    ),
  );
  for (const conversation of state.conversations.values()) {
    const contact = state.contacts.get(conversation.name);
    const warning = conversation.panel.querySelector(".panel-warning");
    const changed = contact && contact.key_changed_to;
    warning.hidden = !changed;
    warning.textContent = changed ? `⚠ ${conversation.name}'s key has changed. Nothing is sent to them until you trust the new key.` : "";
  }
}

async function act(request) {
  try {
    await call(request);
    el("side-error").textContent = "";
  } catch (e) {
    el("side-error").textContent = e.message;
  }
}

async function addContact(event) {
  event.preventDefault();
  const input = el("add-name");
  const name = input.value.trim();
  if (!name) {
    el("side-error").textContent = "Give the screen name of the contact to add.";
    return;
  }
  try {
    await call({ op: "contacts_add", name });
    input.value = "";
    el("side-error").textContent = "";
  } catch (e) {
    el("side-error").textContent = e.message;
  }
}

async function removeContact(name) {
  if (!confirm(`Remove ${name} from your contacts?`)) return;
  await act({ op: "contacts_remove", name });
}

function renderRequests() {
  el("requests").hidden = state.requests.length === 0;
  el("request-list").replaceChildren(
    ...state.requests.map((r) => {
      const count = `${r.messages} message${r.messages === 1 ? "" : "s"}`;
      const read = button(r.name, () => openConversation(r.name, true), `Read ${r.name}'s ${count}`);
      return h(
        "li",
        {},
        read,
        ` ${count} `,
        button("Accept", () => act({ op: "contacts_add", name: r.name }), `Accept ${r.name}'s request`),
        button("Decline", () => act({ op: "requests_decline", name: r.name }), `Decline ${r.name}'s request`),
      );
    }),
  );
}

// ---- conversations -------------------------------------------------------

function conversationOf(name) {
  let conversation = state.conversations.get(name);
  if (conversation) return conversation;
  const panel = el("panel-template").content.firstElementChild.cloneNode(true);
  const id = `panel-${state.conversations.size}-${name}`;
  panel.id = id;
  panel.hidden = true;
  panel.setAttribute("aria-label", `Conversation with ${name}`);
  const log = panel.querySelector(".log");
  log.setAttribute("aria-label", `Messages with ${name}`);
  conversation = {
    name,
    panel,
    log,
    messages: new Map(), // id -> element
    seqs: [], // the stored numbers shown, ascending
    oldest: null,
    complete: false,
    loading: false,
    loaded: false,
    // Replies to requests of an earlier snapshot are not applied.
    generation: 0,
    // Whether the newest message is in view (kept while hidden too).
    stick: true,
    sending: null, // {id, text} of the message being sent
    typingSent: 0,
    typingIdle: null,
  };
  state.conversations.set(name, conversation);
  wirePanel(conversation);
  el("panels").append(panel);
  loadOlder(conversation);
  renderInvitations(conversation);
  renderKeyWarnings();
  return conversation;
}

function wirePanel(conversation) {
  const { panel, name } = conversation;
  const text = panel.querySelector(".message");
  const composer = panel.querySelector(".composer");
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendText(conversation);
  });
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendText(conversation);
    }
  });
  text.addEventListener("input", () => typed(conversation));
  panel.querySelector(".nudge").addEventListener("click", () => panelCall(conversation, { op: "nudge", to: name }));
  const file = panel.querySelector(".file");
  file.addEventListener("change", () => {
    for (const chosen of file.files) offerFile(conversation, chosen);
    file.value = "";
  });
  panel.addEventListener("dragover", (event) => {
    event.preventDefault();
    panel.classList.add("dropping");
  });
  panel.addEventListener("dragleave", () => panel.classList.remove("dropping"));
  panel.addEventListener("drop", (event) => {
    event.preventDefault();
    panel.classList.remove("dropping");
    for (const dropped of event.dataTransfer.files) offerFile(conversation, dropped);
  });
  panel.querySelector(".invite").addEventListener("click", () => {
    const port = Number(panel.querySelector(".port").value);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      panel.querySelector(".panel-error").textContent = "A port is a number from 1 to 65535.";
      return;
    }
    panelCall(conversation, { op: "invite", name, port, revoke: false });
  });
  conversation.log.addEventListener("scroll", () => {
    const log = conversation.log;
    if (log.clientHeight > 0) conversation.stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    if (log.scrollTop < 80) loadOlder(conversation);
  });
}

function openConversation(name, focus) {
  const conversation = conversationOf(name);
  if (focus) {
    state.active = name;
    renderTabs();
    markRead(name);
    conversation.panel.querySelector(".message").focus();
  } else {
    renderTabs();
  }
  return conversation;
}

function closeConversation(name) {
  const conversation = state.conversations.get(name);
  if (!conversation) return;
  conversation.panel.remove();
  state.conversations.delete(name);
  if (state.active === name) state.active = [...state.conversations.keys()].pop() || null;
  renderTabs();
}

function renderTabs() {
  const tabs = el("tabs");
  const focused = tabs.contains(document.activeElement) ? document.activeElement.dataset.name : null;
  const items = [];
  for (const conversation of state.conversations.values()) {
    const name = conversation.name;
    const active = state.active === name;
    const contact = state.contacts.get(name);
    const unread = state.unread.get(name) || 0;
    let words = name;
    if (contact) words += `, ${PRESENCE_WORDS[presenceOf(contact)]}`;
    if (unread > 0) words += `, ${unread} unread`;
    const tab = h("button", {
      type: "button",
      role: "tab",
      class: "tab",
      "aria-selected": String(active),
      "aria-controls": conversation.panel.id,
      "aria-label": words,
      tabindex: active ? "0" : "-1",
      "data-name": name,
    });
    tab.append(h("span", {}, name));
    if (unread > 0) tab.append(" ", h("span", { class: "unread" }, String(unread)));
    tab.addEventListener("click", () => openConversation(name, true));
    tab.addEventListener("keydown", (event) => tabKeys(event, name));
    const close = button("×", () => closeConversation(name), `Close the conversation with ${name}`);
    close.classList.add("close");
    items.push(h("span", { class: "tab-wrap" }, tab, close));
    const shown = conversation.panel.hidden && active;
    conversation.panel.hidden = !active;
    // A hidden log cannot scroll: it is put at its newest when shown.
    if (shown && conversation.stick) conversation.log.scrollTop = conversation.log.scrollHeight;
  }
  tabs.replaceChildren(...items);
  if (focused) {
    const again = tabs.querySelector(`[role="tab"][data-name="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
  el("no-conversation").hidden = state.conversations.size > 0;
}

function tabKeys(event, name) {
  const names = [...state.conversations.keys()];
  const at = names.indexOf(name);
  let next = null;
  if (event.key === "ArrowRight") next = names[(at + 1) % names.length];
  if (event.key === "ArrowLeft") next = names[(at - 1 + names.length) % names.length];
  if (event.key === "Home") next = names[0];
  if (event.key === "End") next = names[names.length - 1];
  if (next === null) return;
  event.preventDefault();
  state.active = next;
  renderTabs();
  markRead(next);
  el("tabs").querySelector('[aria-selected="true"]').focus();
}

async function markRead(name) {
  if (!state.unread.get(name) || document.hidden) return;
  try {
    await call({ op: "mark_read", name });
  } catch (e) {
    // Counted again on the next message; nothing is lost.
  }
}

/** Loads the page of history before the oldest message shown. */
async function loadOlder(conversation) {
  if (conversation.loading || conversation.complete) return;
  conversation.loading = true;
  const generation = conversation.generation;
  const request = { op: "history", name: conversation.name, limit: HISTORY_PAGE };
  if (conversation.oldest !== null) request.before = conversation.oldest;
  try {
    const reply = await call(request);
    if (generation !== conversation.generation) return;
    const log = conversation.log;
    const fromBottom = log.scrollHeight - log.scrollTop;
    // Older than everything shown: in one piece at the top. Messages that
    // events showed meanwhile may be older than some of the page's: those
    // of the page go each where it belongs.
    const first = log.querySelector("li.message");
    const firstSeq = first ? Number(first.dataset.seq) : Infinity;
    const fragment = document.createDocumentFragment();
    for (const stored of reply.messages) {
      if (conversation.messages.has(stored.message.id)) continue;
      const item = messageItem(conversation, stored);
      if (stored.seq < firstSeq) fragment.append(item);
      else place(log, item, stored.seq);
    }
    log.prepend(fragment);
    if (reply.messages.length > 0) conversation.oldest = reply.messages[0].seq;
    conversation.complete = reply.messages.length < HISTORY_PAGE;
    // The first page opens at the newest message; older pages keep what
    // the reader was looking at in place.
    log.scrollTop = conversation.loaded ? log.scrollHeight - fromBottom : log.scrollHeight;
    conversation.loaded = true;
  } catch (e) {
    if (generation === conversation.generation) conversation.panel.querySelector(".panel-error").textContent = e.message;
  } finally {
    if (generation === conversation.generation) conversation.loading = false;
  }
}

// One formatter for every message: making one per message (as
// `toLocaleTimeString` with options does) costs more than the rest of
// drawing it.
const CLOCK = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });

const STATE_WORDS = {
  queued: "queued",
  sent: "sent",
  delivered: "delivered",
  failed: "failed",
  received: "",
};

function messageItem(conversation, stored) {
  const m = stored.message;
  const item = h("li", { class: `message ${stored.direction}`, "data-id": m.id, "data-seq": String(stored.seq) });
  conversation.messages.set(m.id, item);
  fillMessage(item, stored);
  return item;
}

function fillMessage(item, stored) {
  const m = stored.message;
  const time = new Date(m.sent_at);
  const who = h("span", { class: "from" }, m.from);
  const when = h("time", { datetime: time.toISOString() }, CLOCK.format(time));
  const parts = [when, " ", who, ": "];
  if (m.file) {
    parts.push(h("span", { class: "text" }, `offers the file ${m.file.name} (${bytes(m.file.size)})`));
  } else if (m.invite) {
    const verb = m.invite.withdrawn ? "withdrew the invitation to connect to port" : "invites you to connect to port";
    parts.push(h("span", { class: "text" }, stored.direction === "in" ? `${verb} ${m.invite.port}` : `invited to port ${m.invite.port}${m.invite.withdrawn ? " (withdrawn)" : ""}`));
  } else {
    parts.push(h("span", { class: "text" }, m.text));
  }
  if (stored.direction === "out") {
    const words = STATE_WORDS[stored.state] || stored.state;
    const mark = h("span", { class: `state ${stored.state}` }, words);
    if (stored.state === "failed" && stored.error) mark.title = stored.error;
    parts.push(" ", mark);
    item.dataset.state = stored.state;
  }
  item.dataset.updated = String(stored.updated_at);
  item.dataset.rank = String(STATE_RANK[stored.state] || 0);
  item.replaceChildren(...parts);
  if (m.file) {
    const box = h("div", { class: "transfer", "data-transfer": m.id });
    item.append(box);
    fillTransfer(box, m.id, m.file);
  }
}

/** A message of mine that changed state, or was stored. */
function showMessage(stored) {
  const name = stored.direction === "out" ? stored.message.to : stored.message.from;
  const conversation = state.conversations.get(name);
  if (!conversation) return;
  upsert(conversation, stored);
}

const STATE_RANK = { queued: 0, sent: 1, delivered: 2, failed: 2, received: 2 };

/** Whether `stored` is older news than what `item` shows (an answer to a
 * request can arrive after the events that followed it). */
function isStale(item, stored) {
  const shown = Number(item.dataset.updated || 0);
  if (stored.updated_at !== shown) return stored.updated_at < shown;
  return (STATE_RANK[stored.state] || 0) < Number(item.dataset.rank || 0);
}

function upsert(conversation, stored) {
  const existing = conversation.messages.get(stored.message.id);
  if (existing) {
    if (!isStale(existing, stored)) fillMessage(existing, stored);
    return;
  }
  const item = messageItem(conversation, stored);
  const log = conversation.log;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  place(log, item, stored.seq);
  if (log.clientHeight === 0 ? conversation.stick : atBottom || stored.direction === "out") {
    log.scrollTop = log.scrollHeight;
  }
}

/** Puts `item` in stored order: a late arrival goes where it belongs. */
function place(log, item, seq) {
  let after = log.lastElementChild;
  while (after && Number(after.dataset.seq) > seq) after = after.previousElementSibling;
  if (after) after.after(item);
  else log.prepend(item);
}

function onMessage(stored) {
  const from = stored.message.from;
  const focused = state.active === from && !document.hidden;
  // A contact's message opens their conversation; a stranger's waits in
  // "Message requests" (or in their conversation, if it is open).
  const conversation = state.contacts.has(from) ? openConversation(from, state.active === null) : state.conversations.get(from);
  // Shown at once, also while the first page of history loads: the page
  // skips what is shown, and both go in stored order.
  if (conversation) upsert(conversation, stored);
  state.typing.delete(from);
  renderTyping(from);
  if (focused || state.active === from) markRead(from);
  if (document.hidden) notify(from, stored.message.file ? `offers a file: ${stored.message.file.name}` : stored.message.text);
}

async function sendText(conversation) {
  const box = conversation.panel.querySelector(".message");
  const text = box.value;
  if (!text.trim() || conversation.sending?.busy) return;
  const error = conversation.panel.querySelector(".panel-error");
  // A retry of the same text keeps its id: a message whose answer was
  // lost (the client restarting) is stored once, not twice.
  if (!conversation.sending || conversation.sending.text !== text) conversation.sending = { id: randomId(), text };
  const sending = conversation.sending;
  sending.busy = true;
  try {
    const reply = await call({ op: "enqueue", id: sending.id, to: conversation.name, text });
    conversation.sending = null;
    // What was typed meanwhile stays.
    if (box.value === text) box.value = "";
    error.textContent = "";
    stopTyping(conversation);
    if (reply.message) upsert(conversation, reply.message);
  } catch (e) {
    sending.busy = false;
    // A refusal for good (a text too long, no such name) gets a new id next time.
    if (e.kind) conversation.sending = null;
    error.textContent = e.message;
  }
}

function typed(conversation) {
  const now = Date.now();
  if (now - conversation.typingSent > TYPING_REPEAT_MS) {
    conversation.typingSent = now;
    call({ op: "typing", to: conversation.name, active: true }).catch(() => {});
  }
  clearTimeout(conversation.typingIdle);
  conversation.typingIdle = setTimeout(() => stopTyping(conversation), TYPING_IDLE_MS);
}

function stopTyping(conversation) {
  clearTimeout(conversation.typingIdle);
  if (conversation.typingSent === 0) return;
  conversation.typingSent = 0;
  call({ op: "typing", to: conversation.name, active: false }).catch(() => {});
}

function renderTyping(name) {
  const conversation = state.conversations.get(name);
  if (!conversation) return;
  conversation.panel.querySelector(".typing").textContent = isTyping(name) ? `${name} is typing…` : "";
}

async function panelCall(conversation, request) {
  const error = conversation.panel.querySelector(".panel-error");
  try {
    const reply = await call(request);
    error.textContent = "";
    return reply;
  } catch (e) {
    error.textContent = e.message;
    return null;
  }
}

function onNudge(name) {
  if (!state.contacts.has(name)) return;
  const conversation = openConversation(name, state.active === null);
  // Placed after what is shown now; later messages go after it.
  const last = conversation.log.lastElementChild;
  const seq = last ? last.dataset.seq : "0";
  const item = h("li", { class: "nudge-line", "data-seq": seq }, `${name} sent you a nudge!`);
  conversation.log.append(item);
  conversation.log.scrollTop = conversation.log.scrollHeight;
  document.body.classList.remove("shake");
  void document.body.offsetWidth;
  document.body.classList.add("shake");
  if (document.hidden) notify(name, "sent you a nudge");
}

// ---- invitations ---------------------------------------------------------

function renderInvitations(conversation) {
  const mine = state.invitations.filter((i) => i.name === conversation.name && i.revoked_at === null);
  const box = conversation.panel.querySelector(".invitations");
  box.replaceChildren(
    ...mine.map((i) =>
      h(
        "span",
        { class: "invitation" },
        `invited to port ${i.port} `,
        button("Withdraw", () => panelCall(conversation, { op: "invite", name: i.name, port: i.port, revoke: true }), `Withdraw the invitation to port ${i.port}`),
      ),
    ),
  );
}

// ---- files -----------------------------------------------------------------

async function offerFile(conversation, file) {
  const error = conversation.panel.querySelector(".panel-error");
  error.textContent = `Preparing ${file.name}…`;
  try {
    const kept = await fetch(`/api/upload?name=${encodeURIComponent(file.name)}`, {
      method: "POST",
      headers: keyed({ "Content-Type": "application/octet-stream" }),
      body: file,
    });
    if (!kept.ok) throw new Error(await kept.text());
    const { path } = await kept.json();
    const reply = await call({ op: "file_send", id: randomId(), to: conversation.name, path });
    error.textContent = "";
    if (reply.message) upsert(conversation, reply.message);
  } catch (e) {
    error.textContent = `Cannot offer ${file.name}: ${e.message}`;
  }
}

function renderTransfer(id) {
  for (const box of document.querySelectorAll(`[data-transfer="${id}"]`)) {
    const transfer = state.transfers.get(id);
    fillTransfer(box, id, transfer ? transfer.offer : null);
  }
}

function fillTransfer(box, id, offer) {
  const transfer = state.transfers.get(id);
  const parts = [];
  const stateName = transfer ? transfer.state : "offered";
  const mine = transfer ? transfer.direction === "out" : box.closest(".out") !== null;
  const size = offer ? offer.size : 0;
  if (stateName === "offered" && !mine) {
    const accept = button("Accept", () => act({ op: "file_accept", id, dir: null }));
    const decline = button("Decline", () => act({ op: "file_decline", id }));
    if (offer) {
      accept.setAttribute("aria-description", `Accept ${offer.name}`);
      decline.setAttribute("aria-description", `Decline ${offer.name}`);
    }
    parts.push(accept, " ", decline);
  } else if (stateName === "offered") {
    parts.push(h("span", {}, "waiting for them to accept"));
  } else if (stateName === "accepted") {
    const done = box.dataset.done ? Number(box.dataset.done) : transfer && transfer.received ? transfer.received : 0;
    const bar = h("progress", {
      role: "progressbar",
      max: String(size || 1),
      value: String(done),
      "aria-valuemin": "0",
      "aria-valuemax": String(size),
      "aria-valuenow": String(done),
      "aria-label": `${offer ? offer.name : "File"}: ${percent(done, size)}`,
    });
    parts.push(bar, " ", h("span", { class: "rate" }, box.dataset.rate || (mine ? "sending…" : "receiving…")));
  } else if (stateName === "completed") {
    const where = transfer && transfer.path && !mine ? `saved as ${transfer.path}` : mine ? "sent" : "received";
    parts.push(h("span", { class: "saved" }, where));
  } else if (stateName === "declined") {
    parts.push(h("span", {}, "declined"));
  } else if (stateName === "failed") {
    parts.push(h("span", { class: "error" }, `failed: ${(transfer && transfer.error) || "stopped"}`));
    if (!mine) parts.push(" ", button("Try again", () => act({ op: "file_accept", id, dir: null }), "Try the transfer again"));
  }
  box.replaceChildren(...parts);
}

const rates = new Map(); // id -> {t, bytes, rate}

function onProgress(id, done, size) {
  const now = performance.now();
  const last = rates.get(id);
  let rate = last ? last.rate : 0;
  if (last && now > last.t) {
    const sample = ((done - last.bytes) * 1000) / (now - last.t);
    rate = rate ? rate * 0.7 + sample * 0.3 : sample;
  }
  rates.set(id, { t: now, bytes: done, rate });
  const transfer = state.transfers.get(id);
  if (transfer) transfer.received = done;
  for (const box of document.querySelectorAll(`[data-transfer="${id}"]`)) {
    box.dataset.done = String(done);
    const left = rate > 0 ? (size - done) / rate : null;
    box.dataset.rate = `${bytes(done)} of ${bytes(size)}${rate > 0 ? `, ${bytes(rate)}/s` : ""}${left !== null ? `, ${duration(left)} left` : ""}`;
    const bar = box.querySelector("progress");
    if (bar) {
      bar.value = done;
      bar.max = size || 1;
      bar.setAttribute("aria-valuenow", String(done));
      bar.setAttribute("aria-valuemax", String(size));
      bar.setAttribute("aria-label", `${percent(done, size)}`);
      const rateText = box.querySelector(".rate");
      if (rateText) rateText.textContent = box.dataset.rate;
    } else if (transfer && transfer.state === "accepted") {
      fillTransfer(box, id, transfer.offer);
    }
  }
}

function onTransferWaiting(id, reason) {
  for (const box of document.querySelectorAll(`[data-transfer="${id}"]`)) {
    box.dataset.rate = `waiting: ${reason}`;
    const rateText = box.querySelector(".rate");
    if (rateText) rateText.textContent = box.dataset.rate;
  }
}

// ---- notifications, banner, helpers -------------------------------------

function notify(from, text) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const note = new Notification(from, { body: text, tag: `messenger-${from}` });
  note.onclick = () => {
    window.focus();
    openConversation(from, true);
  };
}

function showBanner(text) {
  const banner = el("banner");
  banner.textContent = text;
  banner.hidden = false;
}

function hideBanner() {
  el("banner").hidden = true;
}

function el(id) {
  return document.getElementById(id);
}

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function button(text, onClick, label) {
  const b = h("button", { type: "button" }, text);
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function percent(done, size) {
  return size > 0 ? `${Math.floor((done * 100) / size)}%` : "0%";
}

function duration(seconds) {
  if (!Number.isFinite(seconds)) return "unknown";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

// ---- wiring ----------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  el("sign-in-form").addEventListener("submit", signIn);
  el("add-form").addEventListener("submit", addContact);
  el("me-status").addEventListener("change", setStatus);
  el("me-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      setStatus();
      event.target.blur();
    }
  });
  el("me-text").addEventListener("change", setStatus);
  el("notify").addEventListener("click", async () => {
    await Notification.requestPermission();
    renderMe();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.active) markRead(state.active);
  });
  document.body.addEventListener("animationend", () => document.body.classList.remove("shake"));
  start();
});
