// Keys on an image page: "a" accepts the prediction as the label, "l" goes to the label field.
document.addEventListener("keydown", (event) => {
  if (event.target.matches("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const accept = document.getElementById("accept");
  if (event.key === "a" && accept) { accept.click(); }
  if (event.key === "l") { const choice = document.getElementById("label-choice"); if (choice) { event.preventDefault(); choice.focus(); } }
});
