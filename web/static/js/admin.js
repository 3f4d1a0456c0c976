// Admin forms: show the connection fields of the chosen driver; confirm a delete; refuse
// a photo past the size limit before it is sent. Without JavaScript every field shows and
// the server uses those of the driver chosen.
(function () {
  "use strict";
  document.querySelectorAll("[data-driver-form]").forEach((form) => {
    const select = form.querySelector("[data-driver-select]");
    if (!select) return;
    const apply = () => {
      form.querySelectorAll("[data-drivers]").forEach((el) => {
        el.hidden = !el.dataset.drivers.split(" ").includes(select.value);
      });
    };
    select.addEventListener("change", apply);
    apply();
  });
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  });
  document.querySelectorAll("form[data-max-bytes]").forEach((form) => {
    form.addEventListener("submit", (ev) => {
      const input = form.querySelector("input[type=file]");
      const file = input && input.files && input.files[0];
      if (file && file.size > Number(form.dataset.maxBytes)) {
        ev.preventDefault();
        const most = form.dataset.maxText || `${Math.round(form.dataset.maxBytes / 1024)} KiB`;
        input.setCustomValidity(`The photo is larger than ${most}: make it smaller first.`);
        input.reportValidity();
        input.addEventListener("change", () => input.setCustomValidity(""), { once: true });
      }
    });
  });
})();
