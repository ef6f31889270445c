# sed script run by doxygen over the Markdown pages (FILTER_PATTERNS in docs/Doxyfile).
# Doxygen 1.9 makes no GitHub-style heading anchors and has no pages for files outside INPUT, so
# links to a #heading or to ../ files become plain text, and page.md#heading links point at the
# page (its title) instead. The files themselves are not changed.
s/\[\([^]]*\)\](#[^)]*)/\1/g
s/\[\([^]]*\)\](\.\.\/[^)]*)/\1/g
s/\(\]([^)#]*\.md\)#[^)]*)/\1)/g
