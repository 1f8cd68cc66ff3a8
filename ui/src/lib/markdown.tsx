// A small Markdown renderer that builds React elements (never HTML strings), so a model's
// or a user's text can never inject markup. It covers what assistants write: paragraphs,
// headings, lists, quotes, fenced code, inline code, emphasis and links.
import { Fragment, memo, type ReactNode } from "react";

type Block =
  | { kind: "p"; text: string }
  | { kind: "h"; level: number; text: string }
  | { kind: "code"; lang: string; text: string }
  | { kind: "quote"; text: string }
  | { kind: "list"; ordered: boolean; start: number; items: string[] }
  | { kind: "hr" };

const FENCE = /^(\s*)(```+|~~~+)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;

export function parseBlocks(src: string): Block[] {
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  const out: Block[] = [];
  let para: string[] = [];
  const flush = () => {
    if (para.length) out.push({ kind: "p", text: para.join("\n") });
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flush();
      const body: string[] = [];
      const marker = fence[2];
      for (i++; i < lines.length && !lines[i].trim().startsWith(marker); i++) body.push(lines[i]);
      out.push({ kind: "code", lang: fence[3], text: body.join("\n") });
      continue;
    }
    if (!line.trim()) {
      flush();
      continue;
    }
    const h = HEADING.exec(line);
    if (h) {
      flush();
      out.push({ kind: "h", level: h[1].length, text: h[2] });
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      out.push({ kind: "hr" });
      continue;
    }
    if (line.startsWith(">")) {
      flush();
      const body: string[] = [];
      for (; i < lines.length && lines[i].startsWith(">"); i++) {
        body.push(lines[i].replace(/^>\s?/, ""));
      }
      i--;
      out.push({ kind: "quote", text: body.join("\n") });
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = NUMBERED.exec(line);
    if (bullet || numbered) {
      flush();
      const ordered = !bullet;
      const items: string[] = [];
      const start = numbered ? Number(numbered[1]) : 1;
      for (; i < lines.length; i++) {
        const m = ordered ? NUMBERED.exec(lines[i]) : BULLET.exec(lines[i]);
        if (m) items.push(ordered ? m[2] : m[1]);
        else if (/^\s{2,}\S/.test(lines[i]) && items.length) {
          items[items.length - 1] += "\n" + lines[i].trim();
        } else break;
      }
      i--;
      out.push({ kind: "list", ordered, start, items });
      continue;
    }
    para.push(line);
  }
  flush();
  return out;
}

const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([\s\S]+?)\*\*|__([\s\S]+?)__|\*([^*\s][^*]*?)\*|(?<![\w])_([^_\s][^_]*?)_(?![\w])|\[([^\]]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g;

function safeHref(href: string): string | null {
  return /^(https?:|mailto:)/i.test(href) ? href : null;
}

export function inline(text: string, keyBase = "i"): ReactNode[] {
  const out: ReactNode[] = [];
  let last = 0;
  let n = 0;
  for (const m of text.matchAll(INLINE)) {
    const at = m.index ?? 0;
    if (at > last) out.push(text.slice(last, at));
    const key = `${keyBase}${n++}`;
    if (m[2] !== undefined) out.push(<code key={key}>{m[2].trim() || m[2]}</code>);
    else if (m[3] !== undefined || m[4] !== undefined) {
      out.push(<strong key={key}>{inline(m[3] ?? m[4], key)}</strong>);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      out.push(<em key={key}>{inline(m[5] ?? m[6], key)}</em>);
    } else if (m[7] !== undefined) {
      const href = safeHref(m[8]);
      out.push(
        href ? (
          <a key={key} href={href} target="_blank" rel="noreferrer noopener">
            {inline(m[7], key)}
          </a>
        ) : (
          m[0]
        ),
      );
    } else if (m[9] !== undefined) {
      out.push(
        <a key={key} href={m[9]} target="_blank" rel="noreferrer noopener">
          {m[9]}
        </a>,
      );
    }
    last = at + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function withBreaks(text: string, key: string): ReactNode[] {
  return text.split("\n").flatMap((line, i) => {
    const parts = inline(line, `${key}l${i}`);
    return i === 0 ? parts : [<br key={`${key}br${i}`} />, ...parts];
  });
}

function renderBlock(b: Block, key: string): ReactNode {
  switch (b.kind) {
    case "p":
      return <p key={key}>{withBreaks(b.text, key)}</p>;
    case "h": {
      const Tag = `h${Math.min(6, b.level + 2)}` as "h3";
      return <Tag key={key}>{inline(b.text, key)}</Tag>;
    }
    case "code":
      return (
        <pre key={key} className="md-code" data-lang={b.lang || undefined}>
          <code>{b.text}</code>
        </pre>
      );
    case "quote":
      return (
        <blockquote key={key}>
          {parseBlocks(b.text).map((c, i) => renderBlock(c, `${key}q${i}`))}
        </blockquote>
      );
    case "list": {
      const items = b.items.map((it, i) => <li key={i}>{withBreaks(it, `${key}li${i}`)}</li>);
      return b.ordered ? (
        <ol key={key} start={b.start}>
          {items}
        </ol>
      ) : (
        <ul key={key}>{items}</ul>
      );
    }
    case "hr":
      return <hr key={key} />;
  }
}

export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="md">
      {parseBlocks(text).map((b, i) => (
        <Fragment key={i}>{renderBlock(b, `b${i}`)}</Fragment>
      ))}
    </div>
  );
});
