// Entry point. The daemon's CSP allows styles from 'self' only, so the
// <style> elements xterm.js creates for its renderer would be ignored; this
// shim moves what xterm.js writes into them into constructed style sheets
// (document.adoptedStyleSheets), which CSP does not treat as inline markup.
// No other code path sets style text.
import { createRoot } from 'react-dom/client';
import '@xterm/xterm/css/xterm.css';
import './app.css';
import { App } from './App';

const createElement = document.createElement.bind(document);
(document as any).createElement = (tag: string, opts?: ElementCreationOptions) => {
  if (String(tag).toLowerCase() !== 'style') return createElement(tag, opts);
  // A hidden inert element stands in for the <style>: even an empty
  // <style> is an inline-style CSP violation once it is in the document.
  const el = createElement('span');
  el.hidden = true;
  const sheet = new CSSStyleSheet();
  let text = '';
  Object.defineProperty(el, 'textContent', {
    get: () => text,
    set: (v: string | null) => {
      text = v ?? '';
      sheet.replaceSync(text);
    },
  });
  // Adopted while the element is in the document (xterm.js removes it on dispose).
  const adopt = () => {
    if (!document.adoptedStyleSheets.includes(sheet))
      document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  };
  const drop = () => {
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
  };
  const remove = el.remove.bind(el);
  el.remove = () => { drop(); remove(); };
  queueMicrotask(adopt);
  return el;
};

createRoot(document.getElementById('root')!).render(<App />);
