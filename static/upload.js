// Artifact upload with a progress bar: sends the chosen file as the request
// body (never read into memory here) to the dashboard's upload route, with
// the session's CSRF token in a header. No inline scripts: the CSP forbids them.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-upload")) return;
  event.preventDefault();
  const input = form.querySelector("input[type=file]");
  const bar = form.querySelector("progress");
  const status = form.querySelector("[data-upload-status]");
  const button = form.querySelector("button[type=submit]");
  const file = input && input.files ? input.files[0] : null;
  if (!file) {
    status.textContent = "Choose a file first.";
    return;
  }
  const xhr = new XMLHttpRequest();
  xhr.open("POST", form.action + "?name=" + encodeURIComponent(file.name));
  xhr.setRequestHeader("X-CSRF-Token", form.querySelector("input[name=csrf_token]").value);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    bar.max = e.total;
    bar.value = e.loaded;
    status.textContent = "Uploading " + file.name + ": " + Math.floor((100 * e.loaded) / e.total) + " %";
  });
  xhr.addEventListener("load", () => {
    button.disabled = false;
    if (xhr.status === 200 || xhr.status === 201) {
      status.textContent = xhr.status === 201 ? "Uploaded." : "These bytes were uploaded before.";
      window.location.reload();
      return;
    }
    let detail = xhr.statusText || "error " + xhr.status;
    try {
      detail = JSON.parse(xhr.responseText).detail || detail;
    } catch (_) {
      // Not a problem document (a sign-in page, say): keep the status text.
    }
    status.textContent = "Upload failed: " + detail;
  });
  xhr.addEventListener("error", () => {
    button.disabled = false;
    status.textContent = "Upload failed: the connection broke.";
  });
  bar.hidden = false;
  bar.value = 0;
  button.disabled = true;
  status.textContent = "Uploading " + file.name + "…";
  xhr.send(file);
});
