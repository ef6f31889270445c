# Code blocks of the documentation that must compile.
#
# In a Markdown file, a C++ block preceded by an HTML comment naming it is a snippet:
#
#   <!-- snippet: porting_mamba2 -->
#   ```cpp
#   ... a self-contained header: its own #includes, definitions only ...
#   ```
#
# seqmix_extract_doc_snippets(OUT_DIR <dir> SOURCES <var> FILES <md>...) writes each snippet,
# exactly as the docs show it, to <dir>/<name>.hpp (with a #line directive, so a compiler error
# points at the Markdown file and line) plus <dir>/<name>.cpp that includes only that header, and
# returns the .cpp files in <var>. Built into a test program, a snippet that stops compiling fails
# the build, and the program's test cases can #include "<name>.hpp" to run it. The Markdown files
# are configure dependencies: editing one re-extracts its snippets (unchanged files are not
# rewritten, so nothing rebuilds needlessly).
include(${CMAKE_CURRENT_LIST_DIR}/seqmix_markdown.cmake)

function(seqmix_extract_doc_snippets)
  cmake_parse_arguments(ARG "" "OUT_DIR;SOURCES" "FILES" ${ARGN})
  file(MAKE_DIRECTORY "${ARG_OUT_DIR}")
  set(sources "")
  set(names "")
  foreach(md IN LISTS ARG_FILES)
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${md}")
    file(RELATIVE_PATH md_rel "${PROJECT_SOURCE_DIR}" "${md}")
    seqmix_markdown_lines("${md}" lines)
    set(state "text")  # text -> marked (saw the comment) -> code (inside the block)
    set(line_no 0)
    foreach(line IN LISTS lines)
      math(EXPR line_no "${line_no} + 1")
      if(state STREQUAL "code")
        if(line MATCHES "^```[ ]*$")
          seqmix_markdown_restore("${code}" code)
          file(WRITE "${ARG_OUT_DIR}/${name}.hpp.new"
               "// Generated from ${md_rel} (snippet '${name}') when CMake configures: edit the docs.\n"
               "#pragma once\n#line ${first_line} \"${md_rel}\"\n${code}")
          configure_file("${ARG_OUT_DIR}/${name}.hpp.new" "${ARG_OUT_DIR}/${name}.hpp" COPYONLY)
          file(REMOVE "${ARG_OUT_DIR}/${name}.hpp.new")
          file(WRITE "${ARG_OUT_DIR}/${name}.cpp.new"
               "// Compiles the snippet '${name}' of ${md_rel} on its own (it must be self-contained).\n"
               "#include \"${name}.hpp\"\n")
          configure_file("${ARG_OUT_DIR}/${name}.cpp.new" "${ARG_OUT_DIR}/${name}.cpp" COPYONLY)
          file(REMOVE "${ARG_OUT_DIR}/${name}.cpp.new")
          list(APPEND sources "${ARG_OUT_DIR}/${name}.cpp")
          set(state "text")
        else()
          string(APPEND code "${line}\n")
        endif()
      elseif(state STREQUAL "marked")
        if(line MATCHES "^```cpp[ ]*$")
          set(state "code")
          set(code "")
          math(EXPR first_line "${line_no} + 1")
        elseif(NOT line STREQUAL "")
          message(FATAL_ERROR "${md_rel}:${line_no}: the snippet '${name}' must be followed by a ```cpp block")
        endif()
      elseif(line MATCHES "^<!-- snippet: ([A-Za-z0-9_]+) -->[ ]*$")
        set(name "${CMAKE_MATCH_1}")
        if(name IN_LIST names)
          message(FATAL_ERROR "${md_rel}:${line_no}: a snippet named '${name}' exists already")
        endif()
        list(APPEND names "${name}")
        set(state "marked")
      endif()
    endforeach()
    if(NOT state STREQUAL "text")
      message(FATAL_ERROR "${md_rel}: the snippet '${name}' is not closed")
    endif()
  endforeach()
  set(${ARG_SOURCES} "${sources}" PARENT_SCOPE)
endfunction()
