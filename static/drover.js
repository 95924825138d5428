// Small behaviours the dashboard needs without inline scripts (the CSP forbids them).
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
// The clipboard API exists only in secure contexts (https, localhost): on a
// dashboard reached over plain http on the LAN the copy falls back to selecting
// the text, copying it the old way where the browser still allows that, and
// saying so on the button either way.
document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
  if (!button) return;
  const source = document.querySelector(button.getAttribute("data-copy"));
  if (!source) return;
  const label = button.dataset.copyLabel || button.textContent;
  button.dataset.copyLabel = label;
  const say = (text) => {
    button.textContent = text;
    clearTimeout(Number(button.dataset.copyTimer));
    button.dataset.copyTimer = String(setTimeout(() => { button.textContent = label; }, 4000));
  };
  const fallback = () => {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (_) {
      // Refused outright: the selection stays for the keyboard.
    }
    say(copied ? "Copied" : "Selected: press Ctrl+C");
  };
  if (!navigator.clipboard) {
    fallback();
    return;
  }
  navigator.clipboard.writeText(source.textContent.trim()).then(() => say("Copied"), fallback);
});
