// The main menu collapses behind a "Menu" button at phone width (see app.css).
(function () {
  "use strict";
  const button = document.querySelector(".nav-toggle");
  const menu = document.getElementById("main-menu");
  if (!button || !menu) return;
  button.addEventListener("click", () => {
    const open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", String(open));
    menu.classList.toggle("open", open);
  });
})();
