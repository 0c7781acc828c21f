/*
 * Test module for the stand-in: never calls ast_module_register().
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
int stub_noreg_marker(void);
int stub_noreg_marker(void)
{
	return 42;
}
