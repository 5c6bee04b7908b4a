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

// Parts of a page that take the server longer (a reading with Tesseract, an index of embeddings)
// are asked for after the page is shown: `show` draws the answer, a failure is said in `status`.
function askAfterShown(url, status, show) {
  fetch(url, { credentials: "same-origin" })
    .then((response) => response.json())
    .then((found) => { if (found.error) { status.textContent = found.error; return; } show(found); })
    .catch((error) => { status.textContent = "could not ask the server: " + error; });
}

// The image page's databar reading: made from the original file on first view (about a second).
const scaleReading = document.getElementById("scale-reading");
if (scaleReading) {
  const caption = document.getElementById("scale-reading-caption");
  askAfterShown(scaleReading.dataset.reading, caption, (found) => {
    if (!found.ok) { caption.textContent = "not read again: " + found.reason; return; }
    caption.textContent = found.caption + " — " + found.file;
    const notes = document.getElementById("scale-reading-notes");
    for (const note of (found.reading.notes || [])) {
      const item = document.createElement("li");
      item.textContent = note;
      notes.appendChild(item);
    }
    document.getElementById("scale-reading-picture").src = found.picture;
  });
}

// "More like this": the nearest images by the model's embedding, as gallery tiles.
const similar = document.getElementById("similar");
if (similar) {
  const status = document.getElementById("similar-status");
  askAfterShown(similar.dataset.similar, status, (found) => {
    status.textContent = "the " + found.images.length + " nearest images by the embedding of " + found.model +
      " (cosine similarity)";
    for (const image of found.images) {
      const tile = document.createElement("li");
      tile.className = "tile";
      tile.dataset.imageId = image.image_id;
      const link = document.createElement("a");
      link.href = image.page;
      const picture = document.createElement("img");
      picture.src = image.thumbnail;
      picture.alt = image.path || image.image_id;
      link.appendChild(picture);
      tile.appendChild(link);
      for (const [name, text] of [["similarity", image.similarity.toFixed(3)],
                                  ["category", (image.category || "—")],
                                  ["label", image.label || "unlabelled"]]) {
        const span = document.createElement("span");
        span.className = name;
        span.textContent = text;
        tile.appendChild(span);
      }
      similar.appendChild(tile);
    }
  });
}
