# Turns the viewer page (agent/ui/index.html) into a C++ header holding it as
# a raw string literal, so that the binary serves it without any file.
#   cmake -DINPUT=index.html -DOUTPUT=viewer_ui_page.h -P embed.cmake
# The output is rewritten only when its content changes.
if(NOT DEFINED INPUT OR NOT DEFINED OUTPUT)
  message(FATAL_ERROR "embed.cmake: set INPUT and OUTPUT")
endif()
file(READ "${INPUT}" content)
set(delimiter "sidetrace_ui")
string(FIND "${content}" ")${delimiter}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "embed.cmake: ${INPUT} contains the raw-string delimiter )${delimiter}\"")
endif()
file(WRITE "${OUTPUT}.tmp"
  "// Generated from agent/ui/index.html by agent/ui/embed.cmake. Do not edit.\n"
  "#pragma once\n\n#include <string_view>\n\n"
  "namespace sidetrace::agent::detail {\n\n"
  "inline constexpr std::string_view kViewerPage = R\"${delimiter}(${content})${delimiter}\";\n\n"
  "}  // namespace sidetrace::agent::detail\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
