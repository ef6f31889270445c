# Reading Markdown in CMake scripts (included by seqmix_check_docs.cmake and
# seqmix_docs_snippets.cmake).
#
# CMake lists split at ';' except inside square brackets, which Markdown is full of, so a file is
# turned into a list of lines with ';', '[', ']' and '\' replaced by placeholders;
# seqmix_markdown_restore() puts them back.

# The lines of a Markdown file, one list element per line (empty lines kept).
function(seqmix_markdown_lines path out)
  file(READ "${path}" text)
  string(REPLACE ";" "<SEMI>" text "${text}")
  string(REPLACE "[" "<LB>" text "${text}")
  string(REPLACE "]" "<RB>" text "${text}")
  string(REPLACE "\\" "<BS>" text "${text}")
  string(REPLACE "\n" ";" lines "${text}")
  set(${out} "${lines}" PARENT_SCOPE)
endfunction()

# The same lines with every fenced code block (its fences included) blanked, so that line numbers
# still match the file: what is left is prose, headings and tables.
function(seqmix_markdown_prose_lines path out)
  seqmix_markdown_lines("${path}" lines)
  set(prose "")
  set(in_fence FALSE)
  foreach(line IN LISTS lines)
    if(line MATCHES "^[ ]*```")
      if(in_fence)
        set(in_fence FALSE)
      else()
        set(in_fence TRUE)
      endif()
      list(APPEND prose "")
    elseif(in_fence)
      list(APPEND prose "")
    else()
      list(APPEND prose "${line}")
    endif()
  endforeach()
  set(${out} "${prose}" PARENT_SCOPE)
endfunction()

# Text with the placeholders of seqmix_markdown_lines replaced by the original characters.
function(seqmix_markdown_restore text out)
  string(REPLACE "<SEMI>" ";" text "${text}")
  string(REPLACE "<LB>" "[" text "${text}")
  string(REPLACE "<RB>" "]" text "${text}")
  string(REPLACE "<BS>" "\\" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()
