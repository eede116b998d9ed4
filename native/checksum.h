#include <stddef.h>
#include <stdint.h>
#define YAS_SUM16_OUT_OF_RANGE 0xFFFFFFFFu
uint32_t yas_sum16(const char *buf, size_t buflen, size_t offset, size_t len, uint32_t initial);
