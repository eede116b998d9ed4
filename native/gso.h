#include <stddef.h>
#define YAS_GSO_BAD_FRAME (-1)
#define YAS_GSO_NO_ROOM (-2)
int yas_tcp4_segment(const char *frame, size_t len, size_t mss, char *out, size_t out_len);
int yas_tcp6_segment(const char *frame, size_t len, size_t mss, char *out, size_t out_len);
