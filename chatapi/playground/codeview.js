// The "View code" dialog: Python and curl tabs over the current request, and a copy button.

import { curlSnippet, pythonSnippet } from "./codegen.js";

const $ = (id) => document.getElementById(id);
const TABS = ["python", "curl"];

/** Wire the dialog; `currentRequest()` returns the request the page would send now. */
export function wireCodeView(currentRequest) {
  const dialog = $("code-dialog");
  let tab = "python";

  const show = () => {
    let text;
    try {
      const request = currentRequest();
      const base = `${location.origin}/v1`;
      text = tab === "python" ? pythonSnippet(request, base) : curlSnippet(request, base);
    } catch (err) {
      text = `# ${err.message}`; // e.g. invalid JSON in the tools field
    }
    $("code-text").textContent = text;
    for (const name of TABS) {
      const button = $(`tab-${name}`);
      button.setAttribute("aria-selected", String(name === tab));
      button.tabIndex = name === tab ? 0 : -1;
    }
    $("code-panel").setAttribute("aria-labelledby", `tab-${tab}`);
  };

  $("view-code").addEventListener("click", () => {
    show();
    dialog.showModal();
    $(`tab-${tab}`).focus();
  });
  $("close-code").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => {
    // the backdrop counts as the dialog itself; so does the dialog's padding, which stays open
    const r = dialog.getBoundingClientRect();
    const inside = e.clientX >= r.left && e.clientX <= r.right
      && e.clientY >= r.top && e.clientY <= r.bottom;
    if (e.target === dialog && !inside) dialog.close();
  });
  for (const name of TABS) {
    const button = $(`tab-${name}`);
    button.addEventListener("click", () => {
      tab = name;
      show();
    });
    button.addEventListener("keydown", (e) => {
      if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
        tab = tab === "python" ? "curl" : "python";
        show();
        $(`tab-${tab}`).focus();
      }
    });
  }
  $("copy-code").addEventListener("click", () => copy($("code-text").textContent, $("copy-code")));
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard API (plain http on another host): copy through a selection
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => {
    button.textContent = "Copy";
  }, 2000);
}
