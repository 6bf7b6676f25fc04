// Stack viewer for the imaging page: series list, slider / wheel / arrow keys through the
// instances of a series, window presets (肺窗/纵隔窗/骨窗/脑窗). Images are rendered by this
// node's WADO-RS (/frames/1/rendered?window=c,w); instance lists come from QIDO-RS.
"use strict";
(function () {
  const root = document.getElementById("viewer");
  if (!root) return;
  const study = root.dataset.study;
  const img = document.getElementById("frame");
  const slider = document.getElementById("slider");
  const position = document.getElementById("position");
  const wc = document.getElementById("wc");
  const ww = document.getElementById("ww");
  let instances = [];
  let series = null;
  let index = 0;

  function tag(item, t) {
    const v = item[t];
    return v && v.Value ? v.Value[0] : null;
  }

  function show() {
    if (!instances.length) return;
    const sop = instances[index];
    let url = `/dicomweb/studies/${study}/series/${series}/instances/${sop}/frames/1/rendered`;
    if (wc.value !== "" && ww.value !== "") url += `?window=${wc.value},${ww.value},linear`;
    img.src = url;
    slider.value = String(index + 1);
    position.textContent = `${index + 1} / ${instances.length}`;
  }

  async function open(uid, button) {
    series = uid;
    document.querySelectorAll(".series-btn").forEach((b) => b.classList.toggle("active", b === button));
    const r = await fetch(`/dicomweb/studies/${study}/series/${uid}/instances?limit=1000`, {
      headers: { Accept: "application/dicom+json" },
      credentials: "same-origin",
    });
    if (!r.ok) { position.textContent = "无法读取图像列表"; return; }
    const items = await r.json();
    items.sort((a, b) => (tag(a, "00200013") || 0) - (tag(b, "00200013") || 0));
    instances = items.map((it) => tag(it, "00080018"));
    slider.max = String(Math.max(instances.length, 1));
    index = Math.floor(instances.length / 2);
    show();
  }

  function step(d) {
    if (!instances.length) return;
    index = Math.min(instances.length - 1, Math.max(0, index + d));
    show();
  }

  document.querySelectorAll(".series-btn").forEach((b) =>
    b.addEventListener("click", () => open(b.dataset.series, b)));
  document.querySelectorAll(".preset").forEach((b) =>
    b.addEventListener("click", () => { wc.value = b.dataset.center; ww.value = b.dataset.width; show(); }));
  [wc, ww].forEach((el) => el.addEventListener("change", show));
  slider.addEventListener("input", () => { index = Number(slider.value) - 1; show(); });
  img.addEventListener("wheel", (e) => { e.preventDefault(); step(e.deltaY > 0 ? 1 : -1); }, { passive: false });
  document.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" || e.key === "ArrowRight") step(1);
    if (e.key === "ArrowUp" || e.key === "ArrowLeft") step(-1);
  });
  const first = document.querySelector(".series-btn");
  if (first) open(first.dataset.series, first);
})();
