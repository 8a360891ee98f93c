// The API key prompt the upload page and the Live page share. The key lives in sessionStorage:
// this tab only, gone when it closes, never in a cookie, so no other site's page can make the
// browser send it. Each page has a #key-form with #api-key and #key-note.
const KEY_NAME = "midas-onnx-key";
const keyForm = document.getElementById("key-form"), keyInput = document.getElementById("api-key");
const apiKey = () => sessionStorage.getItem(KEY_NAME);
const forgetKey = () => sessionStorage.removeItem(KEY_NAME);

function askForKey(note) {
  document.getElementById("key-note").textContent = note || "kept for this tab only";
  keyForm.hidden = false; keyInput.focus();
}

// then(): what the page does once a key is entered (e.g. start the stream)
function onKeyEntered(then) {
  keyForm.addEventListener("submit", e => {
    e.preventDefault();
    if (!keyInput.value.trim()) return;
    sessionStorage.setItem(KEY_NAME, keyInput.value.trim()); keyInput.value = ""; keyForm.hidden = true;
    if (then) then();
  });
}
