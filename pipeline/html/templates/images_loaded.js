// Sets <body data-images-loaded / data-images-broken> once every image has loaded, so a
// headless browser can check that each data: URI decoded.
window.addEventListener("load", function () {
  var loaded = 0, broken = 0;
  document.querySelectorAll("img").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { loaded++; } else { broken++; }
  });
  document.body.dataset.imagesLoaded = loaded;
  document.body.dataset.imagesBroken = broken;
});
