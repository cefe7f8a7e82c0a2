// The page of `tailor serve`: plain JavaScript against the JSON API, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
let health = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function call(method, url, body, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(url, { method, body, headers });
  const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(data.error || `${response.status}`);
  return data;
}

function say(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

function bars(top) {
  const box = el("div", { class: "bar-list" });
  for (const { label, score } of top) {
    const bar = el("div", { class: "bar" },
      el("div", { class: "fill", style: `width:${(100 * score).toFixed(1)}%` }),
      el("div", { class: "text" }, el("span", { class: "label", text: label }),
                                   el("span", { class: "score", text: `${(100 * score).toFixed(1)} %` })));
    box.append(bar);
  }
  return box;
}

async function query(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("images", file);
  $("results").replaceChildren();
  say("status", `asking about ${files.length} image${files.length > 1 ? "s" : ""}…`);
  try {
    if (health.model !== "embedding") {
      const data = await call("POST", "/predict?k=5", form);
      data.predictions.forEach((p, i) => {
        const right = el("div", { class: "bars" }, el("div", { class: "file", text: p.file }));
        if (p.top) {
          right.append(bars(p.top));
        } else {
          for (const [attribute, top] of Object.entries(p.attributes)) {
            right.append(el("div", { class: "attribute", text: attribute }), bars(top.slice(0, 3)));
          }
        }
        const card = el("div", { class: "prediction" }, el("img", { src: URL.createObjectURL(files[i]), alt: p.file }), right);
        if (p.top) card.dataset.top1 = p.top[0].label;
        $("results").append(card);
      });
    }
    if (health.similar) {
      const single = new FormData();
      single.append("images", files[0]);
      const data = await call("POST", "/similar?k=12", single);
      $("similar").replaceChildren(...data.results[0].neighbours.map((n) =>
        el("div", { class: "tile", "data-id": n.id },
          el("img", { src: n.image_url, alt: n.label, loading: "lazy" }),
          el("div", { text: n.colour ? `${n.label} · ${n.colour}` : n.label }),
          el("div", { class: "meta", text: `#${n.id} · score ${n.score.toFixed(3)}` }))));
      $("similar-section").hidden = false;
    }
    say("status", "");
  } catch (err) {
    say("status", err.message, true);
  }
}

async function showClasses() {
  const data = await call("GET", "/classes");
  if (!data.trained) return;
  $("classes-summary").textContent =
    `${data.trained.length} trained categories, ${data.enrolled.length} enrolled` +
    (data.enrolled.length ? ":" : ".");
  $("enrolled-list").replaceChildren(...data.enrolled.map((name) => {
    const remove = el("button", { class: "remove", type: "button", title: `remove ${name}`, text: "remove" });
    remove.addEventListener("click", async () => {
      try {
        await call("DELETE", `/classes/${encodeURIComponent(name)}`, null, $("enroll-token").value);
        say("enroll-status", `removed ${name}`);
        showClasses();
      } catch (err) { say("enroll-status", err.message, true); }
    });
    return el("li", {}, el("span", { class: "enrolled-name", text: name }), remove);
  }));
}

$("enroll-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  const name = $("enroll-name").value.trim();
  form.append("name", name);
  for (const file of $("enroll-files").files) form.append("images", file);
  $("enroll-submit").disabled = true;
  say("enroll-status", `enrolling ${name}…`);
  try {
    const data = await call("POST", "/enroll", form, $("enroll-token").value);
    say("enroll-status", `enrolled ${data.enrolled} from ${data.images} image${data.images > 1 ? "s" : ""}`);
    showClasses();
  } catch (err) {
    say("enroll-status", err.message, true);
  } finally {
    $("enroll-submit").disabled = false;
  }
});

$("files").addEventListener("change", () => query([...$("files").files]));
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); query([...e.dataTransfer.files]); });

(async () => {
  try {
    health = await call("GET", "/health");
    const can = [health.model !== "embedding" ? "categories" : null, health.similar ? "look-alikes" : null].filter(Boolean);
    $("run-info").textContent = `run ${health.run} · ${can.join(" and ")} · on ${health.device}`;
    $("enroll-section").hidden = !health.enroll;
    if (health.enroll) showClasses();
    document.body.dataset.ready = "1";
  } catch (err) {
    say("run-info", `the server did not answer: ${err.message}`, true);
  }
})();
