// A small, safe Markdown renderer for untrusted model output.
//
// Safety rule: the whole input is HTML-escaped FIRST. Everything added afterwards is one of a
// fixed set of attribute-free tags (plus a class on code blocks built from [a-z0-9-] only),
// so no character of the input can ever become markup.
// Supported: fenced code blocks, inline code, **bold**, *italics*, headings, lists,
// block quotes, horizontal rules, paragraphs and line breaks. Links stay plain text.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for use inside HTML element content or a quoted attribute. */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Private-use characters delimit placeholders; they are stripped from the input first.
const HOLD_OPEN = "\uE000";
const HOLD_CLOSE = "\uE001";

function inline(escaped) {
  const held = [];
  const hold = (html) => `${HOLD_OPEN}${held.push(html) - 1}${HOLD_CLOSE}`;
  let out = escaped.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g,
    (_, _ticks, code) => hold(`<code>${code.trim() === "" ? code : code.replace(/^ (.*) $/s, "$1")}</code>`));
  out = out
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  const restore = new RegExp(`${HOLD_OPEN}(\\d+)${HOLD_CLOSE}`, "g");
  return out.replace(restore, (_, i) => held[Number(i)]);
}

const FENCE = /^ {0,3}(```+|~~~+)\s*([\w+#.-]*)/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}&gt;\s?(.*)$/;

function codeBlock(lines, lang) {
  const safeLang = lang.toLowerCase().replace(/[^a-z0-9-]/g, "");
  const cls = safeLang ? ` class="language-${safeLang}"` : "";
  return `<pre><code${cls}>${lines.join("\n")}</code></pre>`;
}

function list(items) {
  // items: [{ordered, text}] of one top-level list; nesting is flattened to one level.
  const tag = items[0].ordered ? "ol" : "ul";
  const lis = items.map((item) => `<li>${inline(item.text)}</li>`).join("");
  return `<${tag}>${lis}</${tag}>`;
}

/**
 * Render Markdown to an HTML string that is safe to assign to innerHTML.
 * Works on partial text too (an unclosed code fence runs to the end), for streaming.
 */
export function renderMarkdown(source) {
  const text = String(source ?? "").replace(/[\uE000\uE001]/g, "").replace(/\r\n?/g, "\n");
  const lines = escapeHtml(text).split("\n");
  const blocks = [];
  let paragraph = [];
  let items = [];

  const flushParagraph = () => {
    if (paragraph.length) blocks.push(`<p>${inline(paragraph.join("\n")).replace(/\n/g, "<br>")}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (items.length) blocks.push(list(items));
    items = [];
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      flushParagraph();
      flushList();
      const body = [];
      const closer = new RegExp(`^ {0,3}${fence[1][0] === "`" ? "`" : "~"}{${fence[1].length},}\\s*$`);
      for (i += 1; i < lines.length && !closer.test(lines[i]); i++) body.push(lines[i]);
      blocks.push(codeBlock(body, fence[2]));
      continue;
    }
    if (line.trim() === "") {
      flushParagraph();
      // a blank line inside a list does not end it unless the next line is not an item
      if (items.length && !LIST_ITEM.test(lines[i + 1] ?? "")) flushList();
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      flushParagraph();
      flushList();
      const level = heading[1].length;
      blocks.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      continue;
    }
    if (RULE.test(line)) {
      flushParagraph();
      flushList();
      blocks.push("<hr>");
      continue;
    }
    const item = line.match(LIST_ITEM);
    // like CommonMark, a list may interrupt a paragraph if it is bulleted or starts at 1
    if (item && (items.length || paragraph.length === 0 || /^([-*+]|1[.)])$/.test(item[2]))) {
      flushParagraph();
      const ordered = /\d/.test(item[2]);
      if (items.length && items[0].ordered !== ordered && item[1].length === 0) flushList();
      items.push({ ordered, text: item[3] });
      continue;
    }
    if (items.length && /^\s+\S/.test(line)) {
      items[items.length - 1].text += "\n" + line.trim(); // continuation of a list item
      continue;
    }
    const quote = line.match(QUOTE);
    if (quote) {
      flushParagraph();
      flushList();
      const quoted = [quote[1]];
      while (i + 1 < lines.length && QUOTE.test(lines[i + 1])) quoted.push(lines[++i].match(QUOTE)[1]);
      blocks.push(`<blockquote>${inline(quoted.join("\n")).replace(/\n/g, "<br>")}</blockquote>`);
      continue;
    }
    flushList();
    paragraph.push(line);
  }
  flushParagraph();
  flushList();
  return blocks.join("");
}
