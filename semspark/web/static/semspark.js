// Keys on an image page: "a" accepts the prediction as the label, "l" goes to the label field,
// "s" to the scale form, "n" to the next image of a review queue.
document.addEventListener("keydown", (event) => {
  if (event.target.matches("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const accept = document.getElementById("accept");
  if (event.key === "a" && accept) { accept.click(); }
  if (event.key === "n") { const skip = document.getElementById("skip"); if (skip) { window.location = skip.href; } }
  if (event.key === "s") { const value = document.getElementById("scale-value"); if (value) { event.preventDefault(); value.focus(); } }
  if (event.key === "l") { const choice = document.getElementById("label-choice"); if (choice) { event.preventDefault(); choice.focus(); } }
});
